//! IPv6 and dual stack on real kernels: flannel's IPv6 masquerade and
//! forward rules (`ip6tables`, nft table `ip6 flannel-ipv6`) set up by the
//! library's [`Masq`] inside a node namespace — weftd cannot run with
//! `EnableIPv6` yet — and weft-cni's dual-stack and IPv6-only delegate against
//! the real bridge and host-local plugins.

use crate::harness::*;
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::Value;
use std::time::Duration;
use weft::agent::masq::{self, Masq, MasqConfig, Mode};

const NETWORK: &str = "10.244.0.0/16";
const SUBNET: &str = "10.244.3.0/24";
const NETWORK6: &str = "fd00:10::/48";
const SUBNET6: &str = "fd00:10:0:3::/64";
/// A previous run's IPv6 network and subnet (the old subnet.env).
const OLD_NETWORK6: &str = "fd00:99::/48";
const OLD_SUBNET6: &str = "fd00:99:0:7::/64";

fn v6(network: &str, subnet: &str) -> (Ipv6Net, Ipv6Net) {
    (network.parse().unwrap(), subnet.parse().unwrap())
}

fn dual_stack(mode: Mode, ipv6: (Ipv6Net, Ipv6Net)) -> MasqConfig {
    MasqConfig {
        mode,
        network: NETWORK.parse().unwrap(),
        subnet: SUBNET.parse().unwrap(),
        masquerade: true,
        forward: true,
        random_fully_disable: false,
        resync: Duration::from_secs(1),
        ipv6: Some(ipv6),
    }
}

/// [`Masq::setup`] inside `ns`.
fn setup_in(
    ns: &str,
    config: MasqConfig,
    previous: Option<(Ipv4Net, Ipv4Net)>,
    previous6: Option<(Ipv6Net, Ipv6Net)>,
) -> Masq {
    in_netns(ns, move || Masq::setup(config, previous, previous6))
        .unwrap_or_else(|e| panic!("masquerade setup failed: {e}"))
}

/// [`Masq::ensure`] inside `ns`; returns the rules and whether it had to re-assert.
fn ensure_in(ns: &str, mut m: Masq) -> (Masq, bool) {
    in_netns(ns, move || {
        let changed = m.ensure().unwrap_or_else(|e| panic!("ensure failed: {e}"));
        (m, changed)
    })
}

/// flannel's IPv6 masquerade rules (flannel-compat §7) as `ip6tables-save` prints them.
fn expected_masq6(network: &str, subnet: &str) -> Vec<String> {
    vec![
        r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#.to_owned(),
        r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#.to_owned(),
        format!(r#"-A FLANNEL-POSTRTG -s {subnet} -d {network} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG -s {network} -d {subnet} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG ! -s {network} -d {subnet} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG -s {network} ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#),
        format!(r#"-A FLANNEL-POSTRTG ! -s {network} -d {network} -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#),
    ]
}

fn expected_forward6(network: &str) -> Vec<String> {
    vec![
        r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#.to_owned(),
        format!(r#"-A FLANNEL-FWD -s {network} -m comment --comment "flanneld forward" -j ACCEPT"#),
        format!(r#"-A FLANNEL-FWD -d {network} -m comment --comment "flanneld forward" -j ACCEPT"#),
    ]
}

/// The `-A` lines of `<tool>-save -t <table>` carrying `comment`.
fn saved_rules(lab: &Lab, ns: &str, tool: &str, table: &str, comment: &str) -> Vec<String> {
    lab.run(ns, &[tool, "-t", table])
        .lines()
        .filter(|l| l.starts_with("-A ") && l.contains(comment))
        .map(str::to_owned)
        .collect()
}

fn masq6_now(lab: &Lab, ns: &str) -> Vec<String> {
    saved_rules(lab, ns, "ip6tables-save", "nat", "flanneld masq")
}

fn forward6_now(lab: &Lab, ns: &str) -> Vec<String> {
    saved_rules(lab, ns, "ip6tables-save", "filter", "flanneld forward")
}

fn masq4_now(lab: &Lab, ns: &str) -> Vec<String> {
    saved_rules(lab, ns, "iptables-save", "nat", "flanneld masq")
}

#[test]
fn ipv6_iptables_rules_beside_ipv4_resynced_stale_removed_and_cleaned_up() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new(1);
    let ns = lab.ns(0).to_owned();

    // A previous run with another IPv6 network and subnet left its rules.
    let old = setup_in(
        &ns,
        dual_stack(Mode::Iptables, v6(OLD_NETWORK6, OLD_SUBNET6)),
        None,
        None,
    );
    assert_eq!(
        masq6_now(&lab, &ns),
        expected_masq6(OLD_NETWORK6, OLD_SUBNET6)
    );
    drop(old);

    // This run: the old subnet.env's IPv6 rules go, the new ones come, in flannel's order.
    let m = setup_in(
        &ns,
        dual_stack(Mode::Iptables, v6(NETWORK6, SUBNET6)),
        Some((NETWORK.parse().unwrap(), SUBNET.parse().unwrap())),
        Some(v6(OLD_NETWORK6, OLD_SUBNET6)),
    );
    assert_eq!(masq6_now(&lab, &ns), expected_masq6(NETWORK6, SUBNET6));
    assert_eq!(forward6_now(&lab, &ns), expected_forward6(NETWORK6));
    let all6 = lab.run(&ns, &["ip6tables-save"]);
    assert!(
        !all6.contains("fd00:99"),
        "rules of the old IPv6 network left:\n{all6}"
    );
    // The IPv4 rules are there beside them, untouched by IPv6.
    let masq4 = masq4_now(&lab, &ns);
    assert_eq!(masq4.len(), 7, "{masq4:?}");
    assert!(masq4.iter().any(|l| l.contains("! -d 224.0.0.0/4")));
    assert!(!masq4.iter().any(|l| l.contains("fd00")));
    assert!(!masq6_now(&lab, &ns).iter().any(|l| l.contains("10.244.")));

    // Nothing missing: a resync changes nothing.
    let (m, changed) = ensure_in(&ns, m);
    assert!(!changed);

    // A deleted IPv6 rule and the IPv6 POSTROUTING jump come back on resync, in order.
    let missing = &expected_masq6(NETWORK6, SUBNET6)[3];
    let mut delete: Vec<&str> = vec!["ip6tables", "-t", "nat"];
    let args = missing.replacen("-A ", "-D ", 1).replace('"', "");
    // The comment has a space: pass it as one argument.
    let (head, tail) = args.split_once("--comment flanneld masq").unwrap();
    delete.extend(head.split_whitespace());
    delete.extend(["--comment", "flanneld masq"]);
    delete.extend(tail.split_whitespace());
    lab.run(&ns, &delete);
    lab.run(
        &ns,
        &[
            "ip6tables",
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
    lab.run(&ns, &["ip6tables", "-F", "FLANNEL-FWD"]);
    assert_eq!(masq6_now(&lab, &ns).len(), 5);
    let (m, changed) = ensure_in(&ns, m);
    assert!(changed, "the resync did not see the missing IPv6 rules");
    assert_eq!(masq6_now(&lab, &ns), expected_masq6(NETWORK6, SUBNET6));
    assert_eq!(forward6_now(&lab, &ns), expected_forward6(NETWORK6));
    assert_eq!(masq4_now(&lab, &ns), masq4, "the IPv4 rules changed");
    let (m, changed) = ensure_in(&ns, m);
    assert!(!changed);

    // A deleted IPv4 rule is re-asserted without touching the IPv6 ones.
    lab.run(&ns, &["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"]);
    let (m, changed) = ensure_in(&ns, m);
    assert!(changed);
    assert_eq!(masq4_now(&lab, &ns), masq4);
    assert_eq!(masq6_now(&lab, &ns), expected_masq6(NETWORK6, SUBNET6));
    drop(m);

    // weftd cleanup-masq's function removes both families' chains and jumps.
    let errors = in_netns(&ns, masq::cleanup_all);
    assert!(errors.is_empty(), "{errors:?}");
    for tool in ["iptables-save", "ip6tables-save"] {
        let all = lab.run(&ns, &[tool]);
        assert!(!all.contains("FLANNEL"), "{tool} after cleanup:\n{all}");
    }
}

#[test]
fn ipv6_nftables_table_beside_ipv4_resynced_and_cleaned_up() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new(1);
    let ns = lab.ns(0).to_owned();

    let old = setup_in(
        &ns,
        dual_stack(Mode::Nftables, v6(OLD_NETWORK6, OLD_SUBNET6)),
        None,
        None,
    );
    drop(old);
    let m = setup_in(
        &ns,
        dual_stack(Mode::Nftables, v6(NETWORK6, SUBNET6)),
        None,
        Some(v6(OLD_NETWORK6, OLD_SUBNET6)),
    );
    let table = lab.run(&ns, &["nft", "list", "table", "ip6", "flannel-ipv6"]);
    // nft prints the mark in full and without the spaces nft -f accepts around `;`.
    for line in [
        "comment \"rules for flannel-ipv6\"",
        "chain forward {",
        "type filter hook forward priority filter; policy accept;",
        "ip6 saddr fd00:10::/48 accept",
        "ip6 daddr fd00:10::/48 accept",
        "chain postrtg {",
        "type nat hook postrouting priority srcnat; policy accept;",
        "meta mark 0x00004000 return",
        "ip6 saddr fd00:10:0:3::/64 ip6 daddr fd00:10::/48 return",
        "ip6 saddr fd00:10::/48 ip6 daddr fd00:10:0:3::/64 return",
        "ip6 saddr != fd00:10:0:3::/64 ip6 daddr fd00:10::/48 return",
        "ip6 saddr fd00:10::/48 ip6 daddr != ff00::/8 masquerade fully-random",
        "ip6 saddr != fd00:10::/48 ip6 daddr fd00:10::/48 masquerade fully-random",
    ] {
        assert!(
            table.lines().any(|l| l.trim() == line),
            "missing {line:?} in\n{table}"
        );
    }
    assert!(
        !table.contains("fd00:99"),
        "rules of the old IPv6 network left:\n{table}"
    );
    let table4 = lab.run(&ns, &["nft", "list", "table", "ip", "flannel-ipv4"]);
    assert!(table4.contains("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade"));

    let (m, changed) = ensure_in(&ns, m);
    assert!(!changed);
    // A flushed IPv6 chain, then the deleted IPv6 table, come back on resync;
    // the IPv4 table stays as it was.
    lab.run(
        &ns,
        &["nft", "flush", "chain", "ip6", "flannel-ipv6", "postrtg"],
    );
    let (m, changed) = ensure_in(&ns, m);
    assert!(changed);
    assert_eq!(
        lab.run(&ns, &["nft", "list", "table", "ip6", "flannel-ipv6"]),
        table
    );
    lab.run(&ns, &["nft", "delete", "table", "ip6", "flannel-ipv6"]);
    let (m, changed) = ensure_in(&ns, m);
    assert!(changed);
    assert_eq!(
        lab.run(&ns, &["nft", "list", "table", "ip6", "flannel-ipv6"]),
        table
    );
    assert_eq!(
        lab.run(&ns, &["nft", "list", "table", "ip", "flannel-ipv4"]),
        table4
    );
    drop(m);

    // Switching to iptables mode removes the nftables tables of both families (flannel's CleanUp).
    let m = setup_in(
        &ns,
        dual_stack(Mode::Iptables, v6(NETWORK6, SUBNET6)),
        None,
        None,
    );
    drop(m);
    let ruleset = lab.run(&ns, &["nft", "list", "tables"]);
    assert!(!ruleset.contains("flannel-ipv"), "{ruleset}");
    assert_eq!(masq6_now(&lab, &ns), expected_masq6(NETWORK6, SUBNET6));

    // And back: the nftables mode removes the ip6tables chains; cleanup removes the tables.
    let m = setup_in(
        &ns,
        dual_stack(Mode::Nftables, v6(NETWORK6, SUBNET6)),
        None,
        None,
    );
    drop(m);
    assert!(!lab.run(&ns, &["ip6tables-save"]).contains("FLANNEL"));
    let errors = in_netns(&ns, masq::cleanup_all);
    assert!(errors.is_empty(), "{errors:?}");
    let ruleset = lab.run(&ns, &["nft", "list", "ruleset"]);
    assert!(!ruleset.contains("flannel"), "{ruleset}");
}

// ---- weft-cni, dual stack and IPv6 only ----

/// The addresses of an ADD result, by family.
fn result_addresses(result: &Value) -> (Vec<ipnet::IpNet>, Vec<ipnet::IpNet>) {
    let all: Vec<ipnet::IpNet> = result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips in {result}"))
        .iter()
        .map(|ip| {
            ip["address"]
                .as_str()
                .expect("address")
                .parse()
                .expect("CIDR")
        })
        .collect();
    all.into_iter()
        .partition(|a| matches!(a, ipnet::IpNet::V4(_)))
}

/// `ip -<family> route` in `ns`, one route a line, without trailing fields.
fn routes(lab: &Lab, ns: &str, family: &str) -> Vec<String> {
    lab.run(ns, &["ip", family, "route", "show"])
        .lines()
        .map(|l| l.split(" proto ").next().unwrap_or(l).trim().to_owned())
        .map(|l| l.split(" metric ").next().unwrap_or(&l).trim().to_owned())
        .collect()
}

/// The IP files host-local keeps for network `cbr0` (one per held address).
fn held_addresses(lab: &Lab) -> Vec<String> {
    crate::cni::files(&crate::cni::ipam_dir(lab, 0).join("cbr0"))
        .into_iter()
        .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

#[test]
fn weft_cni_dual_stack_pod_gets_both_families_and_del_releases_both() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new(1);
    std::fs::write(
        lab.subnet_file(0),
        format!(
            "FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK={NETWORK6}\nFLANNEL_IPV6_SUBNET=fd00:10:0:3::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        ),
    )
    .unwrap();
    let mut pods = PodNamespaces::default();
    let pod = pods.create(&lab, "dual");
    let call = CniCall {
        node_ns: lab.ns(0),
        container_id: "ctr-dual",
        pod_ns: &pod,
        ifname: "eth0",
    };
    let conf = crate::cni::conf(&lab, 0, "1.0.0");
    let result = call.weft("ADD", &conf).ok().json();

    // The saved delegate is flannel's: both ranges, both networks as routes.
    let saved: Value = serde_json::from_slice(
        &std::fs::read(crate::cni::data_dir(&lab, 0).join("ctr-dual")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        saved["ipam"]["ranges"],
        serde_json::json!([[{"subnet": SUBNET}], [{"subnet": SUBNET6}]])
    );
    assert_eq!(
        saved["ipam"]["routes"],
        serde_json::json!([{"dst": NETWORK}, {"dst": NETWORK6}])
    );

    // One address of each family, from the node's subnets.
    let (v4, v6) = result_addresses(&result);
    assert_eq!((v4.len(), v6.len()), (1, 1), "{result}");
    let subnet4: ipnet::IpNet = SUBNET.parse().unwrap();
    let subnet6: ipnet::IpNet = SUBNET6.parse().unwrap();
    assert!(
        subnet4.contains(&v4[0].addr()) && v4[0].prefix_len() == 24,
        "{v4:?}"
    );
    assert!(
        subnet6.contains(&v6[0].addr()) && v6[0].prefix_len() == 64,
        "{v6:?}"
    );
    let addrs = lab.run(&pod, &["ip", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("inet {} ", v4[0])), "{addrs}");
    assert!(addrs.contains(&format!("inet6 {} ", v6[0])), "{addrs}");

    // Default and cluster-network routes of both families via the bridge's gateways.
    let routes4 = routes(&lab, &pod, "-4");
    assert!(
        routes4.contains(&"default via 10.244.3.1 dev eth0".to_owned()),
        "{routes4:?}"
    );
    assert!(
        routes4.contains(&format!("{NETWORK} via 10.244.3.1 dev eth0")),
        "{routes4:?}"
    );
    let routes6 = routes(&lab, &pod, "-6");
    assert!(
        routes6.contains(&"default via fd00:10:0:3::1 dev eth0".to_owned()),
        "{routes6:?}"
    );
    assert!(
        routes6.contains(&format!("{NETWORK6} via fd00:10:0:3::1 dev eth0")),
        "{routes6:?}"
    );
    let bridge = lab.run(lab.ns(0), &["ip", "-o", "addr", "show", "dev", "cni0"]);
    assert!(bridge.contains("inet 10.244.3.1/24"), "{bridge}");
    assert!(bridge.contains("inet6 fd00:10:0:3::1/64"), "{bridge}");

    // The node reaches the pod over IPv6 (the bridge's gateway, after DAD).
    let pod6 = v6[0].addr().to_string();
    wait_for(
        "the pod's IPv6 address to answer",
        Duration::from_secs(10),
        || {
            lab.exec(lab.ns(0), &["ping", "-6", "-c", "1", "-W", "1", &pod6])
                .status
                .success()
                .then_some(())
        },
    );

    let held = held_addresses(&lab);
    assert!(held.contains(&v4[0].addr().to_string()), "{held:?}");
    assert!(held.contains(&pod6), "{held:?}");

    // DEL releases both addresses and forgets the saved delegate.
    call.weft("DEL", &conf).ok();
    assert_eq!(held_addresses(&lab), Vec::<String>::new());
    assert!(!crate::cni::data_dir(&lab, 0).join("ctr-dual").exists());
    assert_eq!(links(&lab, &pod), ["lo"]);
}

#[test]
fn weft_cni_ipv6_only_subnet_env() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new(1);
    std::fs::write(
        lab.subnet_file(0),
        format!(
            "FLANNEL_IPV6_NETWORK={NETWORK6}\nFLANNEL_IPV6_SUBNET=fd00:10:0:3::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        ),
    )
    .unwrap();
    let mut pods = PodNamespaces::default();
    let pod = pods.create(&lab, "v6only");
    let call = CniCall {
        node_ns: lab.ns(0),
        container_id: "ctr-v6only",
        pod_ns: &pod,
        ifname: "eth0",
    };
    let conf = crate::cni::conf(&lab, 0, "1.0.0");
    let result = call.weft("ADD", &conf).ok().json();
    let saved: Value = serde_json::from_slice(
        &std::fs::read(crate::cni::data_dir(&lab, 0).join("ctr-v6only")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        saved["ipam"]["ranges"],
        serde_json::json!([[{"subnet": SUBNET6}]])
    );
    assert_eq!(
        saved["ipam"]["routes"],
        serde_json::json!([{"dst": NETWORK6}])
    );

    let (v4, v6) = result_addresses(&result);
    assert!(v4.is_empty(), "{result}");
    assert_eq!(v6.len(), 1, "{result}");
    let subnet6: ipnet::IpNet = SUBNET6.parse().unwrap();
    assert!(subnet6.contains(&v6[0].addr()));
    let routes6 = routes(&lab, &pod, "-6");
    assert!(
        routes6.contains(&"default via fd00:10:0:3::1 dev eth0".to_owned()),
        "{routes6:?}"
    );
    assert!(
        routes6.contains(&format!("{NETWORK6} via fd00:10:0:3::1 dev eth0")),
        "{routes6:?}"
    );
    assert_eq!(routes(&lab, &pod, "-4"), Vec::<String>::new());

    call.weft("DEL", &conf).ok();
    assert_eq!(held_addresses(&lab), Vec::<String>::new());
    assert_eq!(links(&lab, &pod), ["lo"]);
}
