//! Issue 17, the CNI part: weft-cni under churn, after a node reboot, and
//! the CNI `GC` verb (issue 16). Everything runs the built `weft-cni` as a
//! runtime does, with Debian's reference `bridge` and `host-local` from
//! `CNI_PATH`, on a real weftd node. Figures go to stderr as `fault cni: ...`
//! lines (run with `--nocapture` to see them).

use crate::cni::{conf, data_dir, files, ipam_dir};
use crate::harness::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// ADD/DEL cycles of the churn test.
const CYCLES: usize = 1000;
/// Threads adding pods at once (each with two pod namespaces, used in turn).
const WORKERS: usize = 8;

/// What a node holds that a pod could leak.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeState {
    /// Links in the node namespace (veths would show here).
    links: Vec<String>,
    /// `iptables-save` rules and chain names (counters dropped).
    iptables: Vec<String>,
    /// Lines of `nft list ruleset` (the same rules through iptables-nft, and any table of weft's).
    nft_lines: usize,
    /// host-local's files for the network (a reservation is a file named by the address).
    reservations: Vec<String>,
    /// weft-cni's saved delegate configurations.
    saved: Vec<String>,
}

impl NodeState {
    fn take(lab: &Lab) -> NodeState {
        let ns = lab.ns(0);
        let iptables = lab
            .run(ns, &["iptables-save"])
            .lines()
            .filter(|l| l.starts_with("-A") || l.starts_with(':'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
            .collect();
        NodeState {
            links: links(lab, ns),
            iptables,
            nft_lines: lab.run(ns, &["nft", "list", "ruleset"]).lines().count(),
            reservations: files(&ipam_dir(lab, 0).join("cbr0")),
            saved: files(&data_dir(lab, 0)),
        }
    }
}

/// How many of `after` are not in `before` (what was left behind).
fn extra(before: &[String], after: &[String]) -> Vec<String> {
    after
        .iter()
        .filter(|x| !before.contains(x))
        .cloned()
        .collect()
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

/// 1000 ADD/DEL cycles, 8 threads ADDing at once (each DELs its previous pod
/// after ADDing the next, so up to 16 pods hold addresses), through weft-cni,
/// the bridge and host-local: every ADD gets an address no other live pod holds, inside the
/// node's subnet, on the pod's eth0; afterwards nothing is left (no
/// reservation, veth, saved configuration or iptables/nft rule; the bridge
/// plugin's per-pod masquerade rules included: weftd runs without --ip-masq,
/// so the bridge masquerades).
#[test]
fn churn_of_concurrent_adds_and_dels_leaks_nothing() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    // Without --ip-masq: the bridge masquerades, so every pod adds and removes its own rules.
    let subnet = lab.start_weftd(0);
    let mut namespaces = PodNamespaces::default();
    let pods: Vec<String> = (0..2 * WORKERS)
        .map(|w| namespaces.create(&lab, &format!("c{w}")))
        .collect();
    let config = conf(&lab, 0, "1.0.0");
    let node_ns = lab.ns(0).to_owned();
    // One cycle first: the bridge plugin creates cni0 (and turns on
    // forwarding) once per node; they stay, as on a real node.
    let warm = CniCall {
        node_ns: &node_ns,
        container_id: "warm-up",
        pod_ns: &pods[0],
        ifname: "eth0",
    };
    warm.weft("ADD", &config).ok();
    warm.weft("DEL", &config).ok();
    let before = NodeState::take(&lab);
    assert!(before.saved.is_empty(), "{before:?}");

    let next = AtomicUsize::new(0);
    let live: Mutex<HashMap<Ipv4Addr, String>> = Mutex::new(HashMap::new());
    let max_live = AtomicUsize::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let latencies: Mutex<Vec<Duration>> = Mutex::new(Vec::with_capacity(CYCLES));
    let checked = AtomicUsize::new(0);
    let (adding, max_adding) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for pair in pods.chunks(2) {
            let (node_ns, config, subnet) = (&node_ns, &config, &subnet);
            let (next, live, max_live, failures, latencies, checked) =
                (&next, &live, &max_live, &failures, &latencies, &checked);
            let (adding, max_adding) = (&adding, &max_adding);
            s.spawn(move || {
                let fail = |what: String| failures.lock().unwrap().push(what);
                // Forgets a pod's address, then DELs it (until the DEL
                // releases it, host-local cannot hand the address out).
                let release = |(id, pod_ns, ip): (String, &String, Option<Ipv4Addr>)| {
                    if let Some(ip) = ip {
                        live.lock().unwrap().remove(&ip);
                    }
                    let call = CniCall {
                        node_ns,
                        container_id: &id,
                        pod_ns,
                        ifname: "eth0",
                    };
                    let del = call.weft("DEL", config);
                    if !del.success || !del.stdout.is_empty() {
                        fail(format!("DEL {id}: {} {}", del.stdout, del.stderr));
                    }
                };
                // Each thread alternates between its two pod namespaces and
                // DELs a pod only after ADDing the next: its previous pod
                // still holds an address while the next one gets one.
                let mut previous = None;
                for turn in 0.. {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= CYCLES {
                        break;
                    }
                    let pod_ns = &pair[turn % 2];
                    let id = format!("churn-{i}");
                    let call = CniCall {
                        node_ns,
                        container_id: &id,
                        pod_ns,
                        ifname: "eth0",
                    };
                    let t = Instant::now();
                    let now_adding = adding.fetch_add(1, Ordering::SeqCst) + 1;
                    max_adding.fetch_max(now_adding, Ordering::SeqCst);
                    let add = call.weft("ADD", config);
                    adding.fetch_sub(1, Ordering::SeqCst);
                    let took = t.elapsed();
                    let ip = if add.success {
                        latencies.lock().unwrap().push(took);
                        let result: Value = serde_json::from_str(&add.stdout).unwrap_or_default();
                        let ip = result["ips"][0]["address"]
                            .as_str()
                            .and_then(|a| a.parse::<ipnet::Ipv4Net>().ok())
                            .map(|n| n.addr());
                        match ip {
                            Some(ip) if subnet.contains(&ip) => Some(ip),
                            _ => {
                                fail(format!("ADD {id}: no address in {subnet}: {}", add.stdout));
                                None
                            }
                        }
                    } else {
                        fail(format!("ADD {id} failed: {} {}", add.stdout, add.stderr));
                        None
                    };
                    if let Some(ip) = ip {
                        let mut held = live.lock().unwrap();
                        if let Some(other) = held.insert(ip, id.clone()) {
                            fail(format!("{ip} given to {id} while {other} holds it"));
                        }
                        max_live.fetch_max(held.len(), Ordering::SeqCst);
                        drop(held);
                        // The pod really has it (a sample, to keep the run short).
                        if i % 20 == 0 {
                            let out = std::process::Command::new("ip")
                                .args(["-n", pod_ns, "-4", "-o", "addr", "show", "dev", "eth0"])
                                .output()
                                .expect("run ip");
                            if !String::from_utf8_lossy(&out.stdout).contains(&format!("{ip}/")) {
                                fail(format!("{id}: {ip} is not on eth0 in {pod_ns}"));
                            }
                            checked.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    // A failed ADD is followed by a DEL too, as a runtime does.
                    if let Some(prev) = previous.replace((id, pod_ns, ip)) {
                        release(prev);
                    }
                }
                if let Some(prev) = previous {
                    release(prev);
                }
            });
        }
    });
    let wall = start.elapsed();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let after = NodeState::take(&lab);
    let mut latencies = latencies.into_inner().unwrap();
    latencies.sort();
    let failures = failures.into_inner().unwrap();
    let leaked_ips = extra(&before.reservations, &after.reservations);
    let leaked_links = extra(&before.links, &after.links);
    let leaked_rules = extra(&before.iptables, &after.iptables);
    let pod_links: Vec<String> = pods
        .iter()
        .flat_map(|ns| links(&lab, ns))
        .filter(|l| l != "lo")
        .collect();
    eprintln!(
        "fault cni: {CYCLES} ADD/DEL cycles through weft-cni+bridge+host-local, {WORKERS} threads: {:.1} s wall, {:.1} cycles/s, at most {} ADDs in flight and {} pods holding an address at once (load average {})",
        wall.as_secs_f64(),
        CYCLES as f64 / wall.as_secs_f64(),
        max_adding.load(Ordering::SeqCst),
        max_live.load(Ordering::SeqCst),
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
    eprintln!(
        "fault cni: ADD latency p50 {} ms, p99 {} ms, max {} ms ({} ADDs; {} checked inside the pod)",
        percentile(&latencies, 50).as_millis(),
        percentile(&latencies, 99).as_millis(),
        latencies.last().copied().unwrap_or_default().as_millis(),
        latencies.len(),
        checked.load(Ordering::SeqCst)
    );
    eprintln!(
        "fault cni: leaks: {} reserved IPs, {} veths on the node, {} in pods, {} saved configs, {} iptables rules/chains ({} before, {} after), nft ruleset {} -> {} lines; {} failures",
        leaked_ips.len(),
        leaked_links.len(),
        pod_links.len(),
        after.saved.len(),
        leaked_rules.len(),
        before.iptables.len(),
        after.iptables.len(),
        before.nft_lines,
        after.nft_lines,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(latencies.len(), CYCLES);
    assert!(
        max_adding.load(Ordering::SeqCst) > 1,
        "the ADDs never overlapped"
    );
    assert_eq!(
        after, before,
        "left behind: IPs {leaked_ips:?}, links {leaked_links:?}, rules {leaked_rules:?}"
    );
    assert!(pod_links.is_empty(), "{pod_links:?}");
    assert_eq!(
        after.reservations,
        ["last_reserved_ip.0", "lock"],
        "no address left reserved"
    );
}

/// Deletes a pod's namespace (the pod is gone; the runtime did not DEL it).
fn delete_pod_ns(ns: &str) {
    let out = output_with_timeout(
        std::process::Command::new("ip").args(["netns", "del", ns]),
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "ip netns del {ns}: {out:?}");
}

fn reserved(lab: &Lab, ip: Ipv4Addr) -> bool {
    ipam_dir(lab, 0).join("cbr0").join(ip.to_string()).exists()
}

/// DEL after the node rebooted (pods' namespaces, the bridge, the veths and
/// the rules gone with the kernel's state; `subnet.env` gone with `/run`;
/// weftd not up yet): exit 0, no output, and what is on disk released, as
/// flannel's plugin does (its DEL needs only the saved delegate). Also with
/// no `CNI_NETNS` at all, and with the state directories gone too (a DEL of
/// what the node no longer knows succeeds and does nothing, flannel's
/// `consumeScratchNetConf` "not exist"). After weftd is back, pods work.
#[test]
fn del_after_a_node_reboot_succeeds_and_releases_what_is_left() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    let subnet = lab.start_weftd(0);
    let mut namespaces = PodNamespaces::default();
    let config = conf(&lab, 0, "1.0.0");
    let mut pods = Vec::new();
    for name in ["ra", "rb", "rc"] {
        let ns = namespaces.create(&lab, name);
        let id = format!("ctr-{name}");
        let call = CniCall {
            node_ns: lab.ns(0),
            container_id: &id,
            pod_ns: &ns,
            ifname: "eth0",
        };
        let (ip, _) = result_ipv4(&call.weft("ADD", &config).ok().json());
        assert!(reserved(&lab, ip));
        pods.push((ns, id, ip));
    }
    let masq = lab.run(lab.ns(0), &["iptables-save", "-t", "nat"]);
    assert!(masq.contains("CNI-"), "the bridge masquerades: {masq}");
    lab.reboot_node(0);
    for (ns, ..) in &pods {
        delete_pod_ns(ns);
    }
    assert!(!lab.subnet_file(0).exists());
    assert_eq!(links(&lab, lab.ns(0)), ["lo", "eth0"]);
    let node_ns = lab.ns(0).to_owned();
    let path = cni_path();
    let del = |id: &str, netns: Option<&str>| {
        let mut env = vec![
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", id),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", path.as_str()),
        ];
        if let Some(netns) = netns {
            env.push(("CNI_NETNS", netns));
        }
        run_plugin(&node_ns, WEFT_CNI, &env, &config, None)
    };
    // The runtime's DEL with the pod's old namespace path, which no longer exists.
    let (_, id, ip) = &pods[0];
    let gone = format!("/run/netns/{}", pods[0].0);
    let out = del(id, Some(&gone));
    assert!(out.success && out.stdout.is_empty(), "{out:?}");
    assert!(!reserved(&lab, *ip), "{ip} released");
    assert!(!data_dir(&lab, 0).join(id).exists());
    // Without CNI_NETNS (runtimes send none once the namespace is gone).
    let (_, id, ip) = &pods[1];
    let out = del(id, None);
    assert!(out.success && out.stdout.is_empty(), "{out:?}");
    assert!(!reserved(&lab, *ip), "{ip} released");
    assert!(!data_dir(&lab, 0).join(id).exists());
    // The state directories gone too (/var/lib/cni wiped or on a tmpfs): nothing to release, success.
    std::fs::remove_dir_all(data_dir(&lab, 0)).unwrap();
    std::fs::remove_dir_all(ipam_dir(&lab, 0)).unwrap();
    let (_, id, _) = &pods[2];
    for netns in [Some(gone.as_str()), None] {
        let out = del(id, netns);
        assert!(out.success && out.stdout.is_empty(), "{out:?}");
    }
    assert!(!data_dir(&lab, 0).exists(), "DEL writes nothing");
    // A second DEL of each still succeeds.
    for (_, id, _) in &pods {
        assert!(del(id, Some(&gone)).success);
    }
    eprintln!(
        "fault cni: DEL after a node reboot: 3 pods, exit 0 each (stale netns path, no CNI_NETNS, state dirs gone); 2 reservations on disk released"
    );
    // weftd back: the node gets its subnet again and a new pod works.
    let again = lab.start_weftd(0);
    assert_eq!(again, subnet, "the lease survives the reboot");
    let ns = namespaces.create(&lab, "rd");
    let call = CniCall {
        node_ns: &node_ns,
        container_id: "ctr-rd",
        pod_ns: &ns,
        ifname: "eth0",
    };
    let (ip, _) = result_ipv4(&call.weft("ADD", &config).ok().json());
    let gw = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    lab.wait_ping(&ns, gw, Duration::from_secs(5));
    assert!(lab.ping(&node_ns, ip, 1));
    call.weft("DEL", &config).ok();
    assert_eq!(files(&data_dir(&lab, 0)), Vec::<String>::new());
    assert_eq!(
        files(&ipam_dir(&lab, 0).join("cbr0")),
        ["last_reserved_ip.0", "lock"]
    );
}

/// GC (CNI spec 1.1.0) with one valid attachment of three: the two others'
/// saved configurations and address reservations go, the valid pod keeps
/// both and still works. With Debian's plugins (no GC before 1.1.0) weft-cni
/// runs the bridge's DEL for each stale pod; with newer ones it forwards GC.
#[test]
fn gc_frees_the_pods_the_runtime_no_longer_has() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    let subnet = lab.start_weftd(0);
    let mut namespaces = PodNamespaces::default();
    // ADD at 1.0.0: Debian's bridge stops there; GC is a 1.1.0 verb.
    let config = conf(&lab, 0, "1.0.0");
    let node_ns = lab.ns(0).to_owned();
    let mut pods = Vec::new();
    for name in ["g0", "g1", "g2"] {
        let ns = namespaces.create(&lab, name);
        let id = format!("ctr-{name}");
        let call = CniCall {
            node_ns: &node_ns,
            container_id: &id,
            pod_ns: &ns,
            ifname: "eth0",
        };
        let (ip, _) = result_ipv4(&call.weft("ADD", &config).ok().json());
        pods.push((ns, id, ip));
    }
    let links_with_pods = links(&lab, &node_ns);
    let masq_chains = |lab: &Lab| {
        lab.run(lab.ns(0), &["iptables-save", "-t", "nat"])
            .lines()
            .filter(|l| l.starts_with(":CNI-"))
            .count()
    };
    let chains_with_pods = masq_chains(&lab);
    // The runtime lost g1 and g2 (their namespaces are gone) without a DEL.
    for (ns, ..) in &pods[1..] {
        delete_pod_ns(ns);
    }
    let mut gc: Value = serde_json::from_str(&conf(&lab, 0, "1.1.0")).unwrap();
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": pods[0].1, "ifname": "eth0" }]);
    let path = cni_path();
    let env = [("CNI_COMMAND", "GC"), ("CNI_PATH", path.as_str())];
    let t = Instant::now();
    let out = run_plugin(&node_ns, WEFT_CNI, &env, &gc.to_string(), None);
    let took = t.elapsed();
    assert!(out.success && out.stdout.is_empty(), "{out:?}");
    let bridge = lab.run(
        &node_ns,
        &[
            "sh",
            "-c",
            "CNI_COMMAND=VERSION /usr/lib/cni/bridge </dev/null",
        ],
    );
    let forwarded = bridge.contains("\"1.1.0\"");
    eprintln!(
        "fault cni: GC with 1 valid attachment of 3: {} ms, delegate {}; bridge masquerade chains {} -> {} (a DEL without the pod's namespace cannot find the address its rules name)",
        took.as_millis(),
        if forwarded {
            "got GC (speaks 1.1.0)"
        } else {
            "got a DEL per stale pod (speaks up to 1.0.0)"
        },
        chains_with_pods,
        masq_chains(&lab)
    );
    assert_eq!(files(&data_dir(&lab, 0)), [pods[0].1.clone()]);
    assert!(reserved(&lab, pods[0].2), "the valid pod keeps its address");
    for (_, id, ip) in &pods[1..] {
        assert!(!reserved(&lab, *ip), "{id}'s {ip} released");
    }
    assert_eq!(
        links(&lab, &node_ns).len(),
        links_with_pods.len() - 2,
        "the lost pods' veths went with their namespaces"
    );
    // The valid pod still works, both ways.
    let gw = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    assert!(lab.ping(&pods[0].0, gw, 2));
    assert!(lab.ping(&node_ns, pods[0].2, 1));
    // A GC without the valid list is refused and removes nothing.
    let mut bad = gc.clone();
    bad.as_object_mut()
        .unwrap()
        .remove("cni.dev/valid-attachments");
    let out = run_plugin(&node_ns, WEFT_CNI, &env, &bad.to_string(), None);
    assert!(!out.success);
    assert_eq!(out.json()["code"], 7);
    assert_eq!(files(&data_dir(&lab, 0)), [pods[0].1.clone()]);
    // The freed addresses can be handed out again; the valid pod is torn down normally.
    let call = CniCall {
        node_ns: &node_ns,
        container_id: &pods[0].1,
        pod_ns: &pods[0].0,
        ifname: "eth0",
    };
    call.weft("DEL", &config).ok();
    assert_eq!(files(&data_dir(&lab, 0)), Vec::<String>::new());
    assert_eq!(
        files(&ipam_dir(&lab, 0).join("cbr0")),
        ["last_reserved_ip.0", "lock"]
    );
}
