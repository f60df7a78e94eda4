//! weft as its users run it: every node's agent in a rootful podman container
//! built from `deploy/Containerfile`, run with the pod spec of the DaemonSet
//! in `deploy/weft.yaml` itself.
//!
//! The DaemonSet is parsed into Kubernetes' own types and each container of
//! its pod template (the init containers in order, then `weftd`) is
//! translated into `podman run` flags the way a kubelet would run it:
//! `command`/`args`, `env` (the downward API's `spec.nodeName`,
//! `metadata.name` and `metadata.namespace` filled in), the security context
//! (`privileged`, capabilities), `hostNetwork` (`--network host`, run from the
//! node's namespace: `nsenter --net=/run/netns/NODE podman run ...`) and the volumes:
//! `hostPath` directories and files resolve under a directory standing in for
//! that node's root filesystem (every "node" here shares one real file
//! system), a `CharDevice` is the real device, a `configMap` is its data
//! written out as files and mounted read-only.
//!
//! Two things stand in for the cluster: the API server is the in-test one
//! (`tests/support/fake_kube.rs`) on the underlay, handed to weftd as
//! `FLANNELD_KUBE_API_URL` where a kubelet would mount a service account, and
//! the probes are made by the test, on the node's address, as a kubelet
//! makes them. The image must have been built first (`bash scripts/image.sh`,
//! which `scripts/test.sh` runs); `WEFT_TEST_IMAGE` names another.

use crate::harness::*;
use crate::kube::{fake_kube, start_api};
use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Volume};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The image the manifests name, as podman names a locally built one.
const MANIFEST_IMAGE: &str = "weft:dev";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn test_image() -> String {
    std::env::var("WEFT_TEST_IMAGE").unwrap_or_else(|_| format!("localhost/{MANIFEST_IMAGE}"))
}

/// `podman` with the repository's containers.conf (runc, cgroupfs, no default
/// ulimits), run in network namespace `ns` when given. `nsenter --net` rather
/// than `ip netns exec`: the latter also mounts a private /sys for the
/// namespace, without /sys/fs/cgroup, and runc then finds no cgroup mount.
fn podman(ns: Option<&str>, args: &[&str], timeout: Duration) -> Output {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg("podman");
            c
        }
        None => Command::new("podman"),
    };
    cmd.args(args);
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        cmd.env(
            "CONTAINERS_CONF",
            repo().join("deploy/podman/containers.conf"),
        );
    }
    output_with_timeout(&mut cmd, timeout)
}

fn podman_ok(ns: Option<&str>, args: &[&str]) -> String {
    let out = podman(ns, args, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "podman {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DaemonSet's pod template and the ConfigMaps it mounts, from deploy/weft.yaml.
struct Manifest {
    namespace: String,
    name: String,
    pod: PodSpec,
    config_maps: BTreeMap<String, ConfigMap>,
}

impl Manifest {
    fn load() -> Manifest {
        let text = std::fs::read_to_string(repo().join("deploy/weft.yaml")).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("deploy/weft.yaml");
        let mut daemon_set = None;
        let mut config_maps = BTreeMap::new();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            match doc["kind"].as_str() {
                Some("DaemonSet") => {
                    assert!(daemon_set.is_none(), "one DaemonSet in deploy/weft.yaml");
                    daemon_set = Some(serde_json::from_value::<DaemonSet>(doc).unwrap());
                }
                Some("ConfigMap") => {
                    let cm: ConfigMap = serde_json::from_value(doc).unwrap();
                    config_maps.insert(cm.metadata.name.clone().unwrap(), cm);
                }
                _ => {}
            }
        }
        let ds = daemon_set.expect("a DaemonSet in deploy/weft.yaml");
        Manifest {
            namespace: ds.metadata.namespace.clone().expect("namespace"),
            name: ds.metadata.name.clone().expect("name"),
            pod: ds.spec.template.spec.expect("pod template spec"),
            config_maps,
        }
    }

    fn volume(&self, name: &str) -> &Volume {
        self.pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    fn init(&self, name: &str) -> &Container {
        self.pod
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no init container {name}"))
    }

    fn weftd(&self) -> &Container {
        self.pod
            .containers
            .iter()
            .find(|c| c.command.as_ref().is_some_and(|c| c[0].ends_with("/weftd")))
            .expect("a container running weftd")
    }

    /// Where `mount_path` of container `c` comes from on a node whose root is `root`.
    fn host_source(&self, c: &Container, mount_path: &str, root: &Path) -> PathBuf {
        let m = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == mount_path)
            .unwrap_or_else(|| panic!("{} mounts nothing at {mount_path}", c.name));
        let hp = self.volume(&m.name).host_path.as_ref().expect("a hostPath");
        under(root, &hp.path)
    }
}

fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// One node: its namespace and the directory standing in for its root file system.
struct Host {
    index: usize,
    ns: String,
    ip: Ipv4Addr,
    root: PathBuf,
    name: String,
}

/// The containers this test started; removed on drop, also when the test fails.
#[derive(Default)]
struct Containers {
    names: Vec<(String, String)>,
}

impl Drop for Containers {
    fn drop(&mut self) {
        for (ns, name) in self.names.iter().rev() {
            let _ = podman(
                Some(ns),
                &["rm", "--force", "--time", "0", name],
                Duration::from_secs(60),
            );
        }
    }
}

/// Translates a container of the pod template into `podman run` arguments.
fn run_args(
    m: &Manifest,
    c: &Container,
    host: &Host,
    container_name: &str,
    extra_env: &[(&str, String)],
) -> Vec<String> {
    let mut args: Vec<String> = vec!["--name".into(), container_name.into()];
    assert_eq!(
        m.pod.host_network,
        Some(true),
        "weft runs on the host network"
    );
    args.push("--network=host".into());
    if let Some(sc) = &c.security_context {
        if sc.privileged == Some(true) {
            args.push("--privileged".into());
        }
        if let Some(caps) = &sc.capabilities {
            for cap in caps.add.iter().flatten() {
                args.push(format!("--cap-add={cap}"));
            }
            for cap in caps.drop.iter().flatten() {
                args.push(format!("--cap-drop={cap}"));
            }
        }
    }
    let pod_name = format!("{}-{}", m.name, host.name);
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), None) => v.clone(),
            (None, Some(from)) => {
                let field = &from
                    .field_ref
                    .as_ref()
                    .unwrap_or_else(|| panic!("env {}: only fieldRef is translated", e.name))
                    .field_path;
                match field.as_str() {
                    "spec.nodeName" => host.name.clone(),
                    "metadata.name" => pod_name.clone(),
                    "metadata.namespace" => m.namespace.clone(),
                    other => panic!("env {}: fieldRef {other} is not translated", e.name),
                }
            }
            _ => panic!("env {}: neither value nor valueFrom", e.name),
        };
        args.push(format!("--env={}={value}", e.name));
    }
    for (k, v) in extra_env {
        args.push(format!("--env={k}={v}"));
    }
    for mount in c.volume_mounts.iter().flatten() {
        let volume = m.volume(&mount.name);
        let read_only = mount.read_only == Some(true);
        let source = if let Some(hp) = &volume.host_path {
            match hp.type_.as_deref() {
                Some("CharDevice") => {
                    use std::os::unix::fs::FileTypeExt;
                    let meta = std::fs::metadata(&hp.path).unwrap();
                    assert!(meta.file_type().is_char_device(), "{}", hp.path);
                    PathBuf::from(&hp.path)
                }
                Some("FileOrCreate") => {
                    let p = under(&host.root, &hp.path);
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&p)
                        .unwrap();
                    p
                }
                None | Some("" | "DirectoryOrCreate" | "Directory") => {
                    let p = under(&host.root, &hp.path);
                    std::fs::create_dir_all(&p).unwrap();
                    p
                }
                Some(other) => panic!("hostPath type {other} is not translated"),
            }
        } else if let Some(cm) = &volume.config_map {
            // A kubelet writes the ConfigMap's keys as files and mounts them read-only.
            let data = m.config_maps[&cm.name].data.clone().unwrap_or_default();
            let dir = host.root.join(format!("configmaps/{}", cm.name));
            std::fs::create_dir_all(&dir).unwrap();
            for (key, text) in data {
                std::fs::write(dir.join(key), text).unwrap();
            }
            args.push(format!(
                "--volume={}:{}:ro",
                dir.display(),
                mount.mount_path
            ));
            continue;
        } else {
            panic!("volume {} is neither hostPath nor configMap", mount.name);
        };
        args.push(format!(
            "--volume={}:{}{}",
            source.display(),
            mount.mount_path,
            if read_only { ":ro" } else { "" }
        ));
    }
    let image = c.image.as_deref().expect("image");
    assert_eq!(image, MANIFEST_IMAGE, "the image scripts/image.sh builds");
    if let Some(command) = &c.command {
        args.push(format!(
            "--entrypoint={}",
            serde_json::to_string(command).unwrap()
        ));
    }
    args.push(test_image());
    args.extend(c.args.iter().flatten().cloned());
    args
}

/// The fake API server's URL, where a kubelet would give the pod its service account.
fn api_env(api: &fake_kube::FakeKube) -> Vec<(&'static str, String)> {
    vec![("FLANNELD_KUBE_API_URL", api.url())]
}

/// Runs the pod on `host`: each init container to completion, then weftd detached.
/// Returns the name of the weftd container.
fn start_pod(
    m: &Manifest,
    host: &Host,
    api: &fake_kube::FakeKube,
    containers: &mut Containers,
) -> String {
    let prefix = format!("{}-{}", host.ns, host.name);
    for init in m.pod.init_containers.iter().flatten() {
        let name = format!("{prefix}-{}", init.name);
        containers.names.push((host.ns.clone(), name.clone()));
        let mut args = vec!["run".to_owned()];
        args.extend(run_args(m, init, host, &name, &[]));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = podman_ok(Some(&host.ns), &args);
        println!("{} init {}: {}", host.name, init.name, out.trim());
        podman_ok(Some(&host.ns), &["rm", &name]);
        containers.names.pop();
    }
    let weftd = m.weftd();
    let name = format!("{prefix}-{}", weftd.name);
    containers.names.push((host.ns.clone(), name.clone()));
    let mut args = vec!["run".to_owned(), "--detach".to_owned()];
    args.extend(run_args(m, weftd, host, &name, &api_env(api)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    podman_ok(Some(&host.ns), &args);
    name
}

/// `weftd status --json` through `podman exec`.
fn status(host: &Host, container: &str) -> Option<Value> {
    let out = podman(
        Some(&host.ns),
        &["exec", container, "/opt/bin/weftd", "status", "--json"],
        Duration::from_secs(20),
    );
    serde_json::from_slice(&out.stdout).ok()
}

fn container_logs(host: &Host, container: &str) -> String {
    let out = podman(
        Some(&host.ns),
        &["logs", container],
        Duration::from_secs(20),
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until the agent in `container` is ready; returns its status.
fn wait_ready(host: &Host, container: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = status(host, container)
            && s["ready"] == true
        {
            return s;
        }
        let state = podman(
            Some(&host.ns),
            &["inspect", "--format", "{{.State.Status}}", container],
            Duration::from_secs(20),
        );
        let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
        assert!(
            state == "running" || state == "created" || state == "configured",
            "container {container} is {state}:\n{}",
            container_logs(host, container)
        );
        assert!(
            Instant::now() < deadline,
            "{container} not ready after 60 s:\n{}",
            container_logs(host, container)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A kubelet's HTTP probe on the node's address.
fn probe(host: &Host, port: u16, path: &str) -> u16 {
    http_get(&host.ns, SocketAddrV4::new(host.ip, port), path).0
}

/// Runs a conflist's plugins on `host` as its container runtime would: the
/// plugins from the host's `/opt/cni/bin` (where install-cni put weft-cni)
/// and the standard plugins, the host's `/run/flannel` and `/var/lib` seen at
/// their usual paths (a private mount view per plugin run).
fn cni_runtime(lab: &Lab, m: &Manifest, host: &Host, list: Value) -> ConfList {
    let keep = lab.dir.path().join(format!("netns-keep-{}", host.index));
    std::fs::create_dir_all(&keep).unwrap();
    let var_lib = under(&host.root, "/var/lib");
    std::fs::create_dir_all(&var_lib).unwrap();
    let wrapper = format!(
        "set -e\n\
         mount --rbind /run/netns {keep}\n\
         mount -t tmpfs tmpfs /run\n\
         mkdir -p /run/netns /run/flannel\n\
         mount --rbind {keep} /run/netns\n\
         mount --bind {run_flannel} /run/flannel\n\
         mount --bind {var_lib} /var/lib",
        keep = keep.display(),
        run_flannel = m
            .host_source(m.weftd(), "/run/flannel", &host.root)
            .display(),
        var_lib = var_lib.display(),
    );
    ConfList {
        list,
        wrapper: Some(wrapper),
        bin_dir: Some(m.host_source(m.init("install-cni"), "/opt/cni/bin", &host.root)),
    }
}

/// The whole DaemonSet on three nodes, each in its own namespace: the
/// install-cni init container writes the plugin and conflist to the host, the
/// take-over init container removes a flannel node's kernel device, weftd
/// installs the masquerade rules from inside the container, pods wired by
/// the installed plugin reach each other across the overlay, `tcpdump -i
/// flannel.1` on the node sees their packets, `podman restart` keeps subnet,
/// VtepMAC and an established TCP flow, and after `podman rm -f` the device
/// and routes are there for the next container.
#[test]
fn the_daemonset_runs_in_rootful_containers_on_three_nodes() {
    if skip_without_root() {
        return;
    }
    let image = test_image();
    let exists = podman(None, &["image", "exists", &image], Duration::from_secs(30));
    assert!(
        exists.status.success(),
        "no image {image}: build it with `bash scripts/image.sh` (scripts/test.sh does), or name one in WEFT_TEST_IMAGE"
    );
    let m = Manifest::load();
    let weftd_spec = m.weftd();
    let cli = weft::agent::cli::Cli::try_parse_from(
        std::iter::once("weftd".to_owned()).chain(weftd_spec.args.iter().flatten().cloned()),
    )
    .expect("weftd takes the DaemonSet's flags");
    assert!(cli.run.ip_masq && cli.run.kube_subnet_mgr);
    let healthz = cli.run.healthz_port;

    let mut lab = Lab::new(3);
    let api = start_api(&lab);
    let cidr = |i: usize| format!("10.244.{}.0/24", 30 + i);
    for i in 0..3 {
        api.add_node(fake_kube::node(&format!("node-{i}"), Some(&cidr(i))));
    }
    let hosts: Vec<Host> = (0..3)
        .map(|i| {
            let root = lab.dir.path().join(format!("node-{i}-root"));
            std::fs::create_dir_all(&root).unwrap();
            Host {
                index: i,
                ns: lab.ns(i).to_owned(),
                ip: lab.nodes[i].ip,
                root,
                name: format!("node-{i}"),
            }
        })
        .collect();
    let mut containers = Containers::default();

    // node-2 ran flannel: its kernel VXLAN device and flannel's conflist are there.
    KernelVtep {
        vni: 1,
        port: 8472,
        subnet: cidr(2).parse().unwrap(),
        mac: "0e:fa:00:00:00:02".into(),
    }
    .create(&lab, &hosts[2].ns, hosts[2].ip);
    let net_d = under(&hosts[2].root, "/etc/cni/net.d");
    std::fs::create_dir_all(&net_d).unwrap();
    std::fs::write(net_d.join("10-flannel.conflist"), "{}").unwrap();

    let mut names = Vec::new();
    let mut statuses = Vec::new();
    for host in &hosts {
        let started = Instant::now();
        let name = start_pod(&m, host, &api, &mut containers);
        let s = wait_ready(host, &name);
        println!(
            "{}: container start to ready (init containers included) {:.2} s",
            host.name,
            started.elapsed().as_secs_f64()
        );
        assert_eq!(s["lease"]["subnet"], cidr(host.index), "{s}");
        assert_eq!(probe(host, healthz, "/healthz"), 200);
        assert_eq!(probe(host, healthz, "/readyz"), 200);
        names.push(name);
        statuses.push(s);
    }
    let subnets: Vec<ipnet::Ipv4Net> = (0..3).map(|i| cidr(i).parse().unwrap()).collect();

    // install-cni wrote the plugin and the ConfigMap's conflist onto each host.
    let cni_conf: Value = serde_json::from_str(
        &m.config_maps["kube-weft-cfg"].data.as_ref().unwrap()["cni-conf.json"],
    )
    .unwrap();
    let install = m.init("install-cni");
    for host in &hosts {
        let conflist = m
            .host_source(install, "/etc/cni/net.d", &host.root)
            .join("10-weft.conflist");
        let written: Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
        assert_eq!(written, cni_conf, "{}", conflist.display());
        let plugin = m
            .host_source(install, "/opt/cni/bin", &host.root)
            .join("weft-cni");
        // It runs on this host, outside the image (statically linked).
        let version = run_plugin(
            &host.ns,
            plugin.to_str().unwrap(),
            &[("CNI_COMMAND", "VERSION")],
            "",
            None,
        )
        .ok();
        assert!(
            version.json()["supportedVersions"].is_array(),
            "{}",
            version.stdout
        );
    }
    // The take-over step removed flannel's device and conflist on node-2; weftd made its own.
    assert!(!net_d.join("10-flannel.conflist").exists());
    let link = lab.run(&hosts[2].ns, &["ip", "-d", "link", "show", "flannel.1"]);
    assert!(link.contains("tun") && !link.contains("vxlan id"), "{link}");

    // Masquerade rules, installed by weftd from inside the container, in the node's namespace.
    for host in &hosts {
        let inside = podman_ok(
            Some(&host.ns),
            &[
                "exec",
                &names[host.index],
                "iptables",
                "-t",
                "nat",
                "-S",
                "FLANNEL-POSTRTG",
            ],
        );
        let rules: Vec<&str> = inside.lines().collect();
        assert_eq!(
            rules,
            crate::cni::expected_masq_rules("10.244.0.0/16", &cidr(host.index)),
            "{}",
            host.name
        );
        let jump = podman_ok(
            Some(&host.ns),
            &[
                "exec",
                &names[host.index],
                "iptables",
                "-t",
                "nat",
                "-S",
                "POSTROUTING",
            ],
        );
        assert!(jump.contains("-j FLANNEL-POSTRTG"), "{jump}");
        let nft = lab.run(
            &host.ns,
            &["nft", "list", "chain", "ip", "nat", "FLANNEL-POSTRTG"],
        );
        // (The host's nft may be older than the image's iptables and not show
        // the comments; the rules themselves it shows.)
        assert!(
            nft.contains(&format!("ip daddr {}", cidr(host.index)))
                && nft.contains("masquerade fully-random"),
            "seen from the host:\n{nft}"
        );
    }

    // A dual-stack cluster's --ip-masq runs the IPv6 tools: the image has them.
    for tool in ["ip6tables", "ip6tables-restore", "ip6tables-save"] {
        let out = podman_ok(
            Some(&hosts[0].ns),
            &["exec", &names[hosts[0].index], tool, "--version"],
        );
        assert!(out.contains("v1."), "{tool} --version: {out}");
    }

    // A pod on each node, wired by the installed plugin with the installed conflist.
    let mut pod_namespaces = PodNamespaces::default();
    let mut pods = Vec::new();
    for host in &hosts {
        let runtime = cni_runtime(&lab, &m, host, cni_conf.clone());
        let ns = pod_namespaces.create(&lab, &format!("pod{}", host.index));
        let id = format!("pod-{}", host.index);
        let call = CniCall {
            node_ns: &host.ns,
            container_id: &id,
            pod_ns: &ns,
            ifname: "eth0",
        };
        let result = runtime.add(&call, &json!({}));
        let (ip, _) = result_ipv4(&result);
        assert!(subnets[host.index].contains(&ip), "{ip}");
        pods.push((ns, ip));
    }
    for (from, (ns, _)) in pods.iter().enumerate() {
        for (to, (_, ip)) in pods.iter().enumerate() {
            if from != to {
                lab.wait_ping(ns, *ip, Duration::from_secs(10));
            }
        }
    }
    let rtt = ping_rtt_us(&lab, &pods[0].0, pods[1].1, 50, "0.02");
    println!("pod on node-0 -> pod on node-1: ping RTT median {rtt:.0} us (50 pings)");

    // tcpdump on the node's flannel.1 sees the pods' packets.
    let capture = lab.dir.path().join("flannel1.pcap");
    let dump = lab.spawn_capture(
        &hosts[0].ns.clone(),
        &[
            "timeout",
            "5",
            "tcpdump",
            "-n",
            "-i",
            "flannel.1",
            "-c",
            "4",
            "-w",
            capture.to_str().unwrap(),
            "icmp",
        ],
        "tcpdump.log",
    );
    assert!(lab.ping(&pods[0].0, pods[1].1, 3));
    assert!(
        lab.wait_child(dump, Duration::from_secs(10)),
        "tcpdump -i flannel.1: {}",
        lab.read_log("tcpdump.log")
    );
    let read = lab.run(
        &hosts[0].ns,
        &["tcpdump", "-n", "-r", capture.to_str().unwrap()],
    );
    assert!(
        read.contains(&format!("{} > {}: ICMP echo request", pods[0].1, pods[1].1)),
        "{read}"
    );

    // Throughput pod to pod across the overlay.
    let server_ip = pods[1].1.to_string();
    lab.iperf3_server(&pods[1].0, &server_ip, "iperf3-s.log");
    let out = lab.run(&pods[0].0, &["iperf3", "-c", &server_ip, "-t", "3", "-J"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let gbps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e9;
    assert!(gbps > 0.0);
    println!("iperf3 TCP pod on node-0 -> pod on node-1, 3 s: {gbps:.2} Gbit/s");

    // `weftd status` through podman exec, as an operator reads it.
    let text = podman_ok(
        Some(&hosts[0].ns),
        &["exec", &names[0], "/opt/bin/weftd", "status"],
    );
    assert!(
        text.contains(&cidr(1)) && text.contains(&cidr(2)) && text.contains("ready"),
        "{text}"
    );

    // podman restart of node-1's container: same subnet and VtepMAC, and an
    // established TCP flow (pod 0 -> pod 1, rate-limited, 8 s) carries on.
    let mac1 = statuses[1]["lease"]["vtep_mac"].clone();
    lab.iperf3_server(&pods[1].0, &server_ip, "iperf3-s2.log");
    let flow = lab.spawn(
        &pods[0].0.clone(),
        &["iperf3", "-c", &server_ip, "-t", "8", "-b", "50M"],
        "iperf3-flow.log",
    );
    std::thread::sleep(Duration::from_secs(2));
    let restarted = Instant::now();
    podman_ok(Some(&hosts[1].ns), &["restart", &names[1]]);
    let s = wait_ready(&hosts[1], &names[1]);
    println!(
        "node-1: podman restart to ready {:.2} s",
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(s["lease"]["subnet"], cidr(1));
    assert_eq!(s["lease"]["vtep_mac"], mac1, "the VtepMAC changed");
    assert_ne!(s["pid"], Value::Null);
    assert!(
        lab.wait_child(flow, Duration::from_secs(30)),
        "the TCP flow broke across podman restart:\n{}",
        lab.read_log("iperf3-flow.log")
    );
    assert_eq!(
        api.annotation_patches("node-1").len(),
        1,
        "nothing to re-publish"
    );

    // podman rm -f on node-2: the device and its routes stay for the next start.
    let mac2 = statuses[2]["lease"]["vtep_mac"].clone();
    podman_ok(Some(&hosts[2].ns), &["rm", "--force", &names[2]]);
    containers.names.retain(|(_, n)| n != &names[2]);
    let link = lab.run(&hosts[2].ns, &["ip", "-o", "link", "show", "flannel.1"]);
    assert!(link.contains("flannel.1"), "{link}");
    let routes = lab.vtep_routes(2);
    for i in 0..2 {
        assert!(
            routes.iter().any(|r| r.starts_with(&cidr(i))),
            "route to {} gone: {routes:?}",
            cidr(i)
        );
    }
    let name = start_pod(&m, &hosts[2], &api, &mut containers);
    let s = wait_ready(&hosts[2], &name);
    assert_eq!(s["lease"]["subnet"], cidr(2));
    assert_eq!(s["lease"]["vtep_mac"], mac2, "the VtepMAC changed");
    assert!(lab.ping(&pods[2].0, pods[0].1, 3));
    assert!(lab.ping(&pods[0].0, pods[2].1, 3));
}
