//! flannel's remaining agent options on real kernels: `--ip-blackhole-route`
//! (present at ready, back within one period after deletion, an `EEXIST`
//! from a bridge-owned prefix logged once) and kube mode's
//! `EVENT_QUEUE_DEPTH` (flannel's fatal parse error; a tiny queue still
//! brings the node up, because weft's queue is lossless) and
//! `CONT_WHEN_CACHE_NOT_READY` (a node list that never comes ends weftd,
//! or, with the variable, weftd goes ready and applies the list later).

use crate::harness::*;
use crate::kube::{
    fake_kube::{node, publish},
    start_api,
};
use std::time::{Duration, Instant};

fn blackholes(lab: &Lab, node: usize) -> String {
    lab.run(
        lab.ns(node),
        &["ip", "-4", "route", "show", "type", "blackhole"],
    )
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} not true after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn blackhole_route_is_kept_and_a_bridge_owned_prefix_is_logged_once() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    lab.start_weftd_with(
        0,
        WeftdOpts {
            extra: vec![
                "--ip-blackhole-route".into(),
                "--iptables-resync".into(),
                "1".into(),
            ],
            ..WeftdOpts::default()
        },
    );
    let subnet = lab.wait_ready(0);
    let line = format!("blackhole {subnet} proto 87");
    wait_until("blackhole route at ready", Duration::from_secs(2), || {
        blackholes(&lab, 0).contains(&line)
    });

    // Deleted → back within one period (1 s) plus slack.
    lab.run(
        lab.ns(0),
        &["ip", "route", "del", "blackhole", &subnet.to_string()],
    );
    assert!(!blackholes(&lab, 0).contains(&line));
    let deleted = Instant::now();
    wait_until(
        "blackhole route re-added",
        Duration::from_millis(2500),
        || blackholes(&lab, 0).contains(&line),
    );
    assert!(deleted.elapsed() < Duration::from_millis(2500));

    // A bridge owning the prefix (cni0's connected route): EEXIST, said once.
    lab.run(
        lab.ns(0),
        &["ip", "route", "del", "blackhole", &subnet.to_string()],
    );
    lab.run(
        lab.ns(0),
        &[
            "ip", "link", "add", "cni0", "type", "veth", "peer", "name", "cni0p",
        ],
    );
    lab.run(lab.ns(0), &["ip", "link", "set", "cni0p", "up"]);
    lab.run(lab.ns(0), &["ip", "link", "set", "cni0", "up"]);
    lab.run(
        lab.ns(0),
        &["ip", "route", "add", &subnet.to_string(), "dev", "cni0"],
    );
    std::thread::sleep(Duration::from_millis(3500));
    assert!(!blackholes(&lab, 0).contains(&line));
    let said = |lab: &Lab| lab.weftd_log(0).matches("another route owns").count();
    assert_eq!(said(&lab), 1, "{}", lab.weftd_log(0));
    assert!(!lab.weftd_log(0).contains("Failed to setup blackhole route"));

    // The bridge's route gone → the blackhole comes back.
    lab.run(
        lab.ns(0),
        &["ip", "route", "del", &subnet.to_string(), "dev", "cni0"],
    );
    wait_until(
        "blackhole route after cni0's route went",
        Duration::from_millis(2500),
        || blackholes(&lab, 0).contains(&line),
    );
    assert!(lab.weftd_pid(0).is_some());
}

/// Dual stack: a blackhole route for the IPv6 subnet as well, kept the same way.
#[test]
fn blackhole_routes_cover_both_families_in_dual_stack() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new_dual(1);
    lab.set_net_conf(&dual_net_conf(4789));
    let (s4, s6) = lab.start_weftd_dual(
        0,
        WeftdOpts {
            extra: vec![
                "--ip-blackhole-route".into(),
                "--iptables-resync".into(),
                "1".into(),
            ],
            ..WeftdOpts::default()
        },
    );
    let blackholes6 = |lab: &Lab| {
        lab.run(
            lab.ns(0),
            &["ip", "-6", "route", "show", "type", "blackhole"],
        )
    };
    // `ip -6` prints `blackhole S6 dev lo proto 87 metric 1024 pref medium`.
    let line4 = format!("blackhole {s4} proto 87");
    let has6 = |text: &str| {
        text.lines()
            .any(|l| l.starts_with(&format!("blackhole {s6} ")) && l.contains(" proto 87 "))
    };
    wait_until(
        "both blackhole routes at ready",
        Duration::from_secs(2),
        || blackholes(&lab, 0).contains(&line4) && has6(&blackholes6(&lab)),
    );
    lab.run(
        lab.ns(0),
        &["ip", "-6", "route", "del", "blackhole", &s6.to_string()],
    );
    assert!(!has6(&blackholes6(&lab)));
    wait_until(
        "IPv6 blackhole route re-added",
        Duration::from_millis(2500),
        || has6(&blackholes6(&lab)),
    );
    // The stale-route sweep leaves the node's own blackholes alone.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(blackholes(&lab, 0).contains(&line4));
    assert!(has6(&blackholes6(&lab)));
    assert!(!lab.weftd_log(0).contains("stale"), "{}", lab.weftd_log(0));
}

/// Dual stack: `--iface` given as the node's IPv6 address chooses the
/// interface holding it (flanneld accepts either family there), and the
/// IPv6 VTEP listens on and announces that address.
#[test]
fn iface_given_as_an_ipv6_address_chooses_its_interface() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new_dual(2);
    lab.set_net_conf(&dual_net_conf(4789));
    let ip6 = lab.ip6(0);
    lab.start_weftd_dual(
        0,
        WeftdOpts {
            extra: vec!["--iface".into(), ip6.to_string()],
            ..WeftdOpts::default()
        },
    );
    let (_, s6) = lab.start_weftd_dual(1, WeftdOpts::default());
    let status = lab.status(0);
    assert_eq!(status["node"]["interface"], "eth0", "{status}");
    assert_eq!(
        status["ipv6"]["interface_addr"],
        ip6.to_string(),
        "{status}"
    );
    assert_eq!(status["ipv6"]["public_ip"], ip6.to_string(), "{status}");
    lab.wait_ping6(lab.ns(0), s6.network(), Duration::from_secs(5));
}

#[test]
fn blackhole_route_is_off_by_default() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    let subnet = lab.start_weftd(0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !blackholes(&lab, 0).contains(&subnet.to_string()),
        "{}",
        blackholes(&lab, 0)
    );
}

fn kube_opts(api_url: String, env: &[(&str, &str)]) -> WeftdOpts {
    let mut all = vec![("NODE_NAME".to_owned(), "node-0".to_owned())];
    all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    WeftdOpts {
        extra: vec!["--kube-subnet-mgr".into(), "--kube-api-url".into(), api_url],
        env: all,
        no_local_store: true,
        ..WeftdOpts::default()
    }
}

#[test]
fn a_bad_event_queue_depth_exits_with_flannels_message() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    let api = start_api(&lab);
    api.add_node(node("node-0", Some("10.244.0.0/24")));
    lab.start_weftd_with(0, kube_opts(api.url(), &[("EVENT_QUEUE_DEPTH", "abc")]));
    let code = lab.wait_weftd_exit(0, Duration::from_secs(10));
    assert_eq!(code, Some(1));
    let log = lab.weftd_log(0);
    assert!(
        log.contains(
            r#"env EVENT_QUEUE_DEPTH=abc format error: strconv.Atoi: parsing "abc": invalid syntax"#
        ),
        "{log}"
    );
    assert!(!lab.subnet_file(0).exists());
    assert!(api.annotation_patches("node-0").is_empty());
}

#[test]
fn an_event_queue_of_one_still_brings_the_node_up() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    let api = start_api(&lab);
    api.add_node(node("node-0", Some("10.244.0.0/24")));
    for i in 1..4 {
        api.add_node(node(
            &format!("peer-{i}"),
            Some(&format!("10.244.{i}.0/24")),
        ));
    }
    lab.start_weftd_with(0, kube_opts(api.url(), &[("EVENT_QUEUE_DEPTH", "1")]));
    let subnet = lab.wait_ready(0);
    assert_eq!(subnet.to_string(), "10.244.0.0/24");
}

const QUICK_SYNC: &str = "[agent]\nkube_sync_timeout_seconds = 2\n";

#[test]
fn a_node_list_that_never_comes_ends_weftd_with_flannels_message() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    let api = start_api(&lab);
    api.add_node(node("node-0", Some("10.244.0.0/24")));
    api.stall_lists(true);
    let mut opts = kube_opts(api.url(), &[]);
    opts.tunables = Some(QUICK_SYNC.into());
    lab.start_weftd_with(0, opts);
    let code = lab.wait_weftd_exit(0, Duration::from_secs(15));
    api.stall_lists(false);
    assert_eq!(code, Some(1));
    let log = lab.weftd_log(0);
    assert!(
        log.contains("error waiting for nodeController to sync state: timed out after 2 s (set CONT_WHEN_CACHE_NOT_READY=true to start anyway)"),
        "{log}"
    );
    assert!(!lab.subnet_file(0).exists());
}

#[test]
fn cont_when_cache_not_ready_goes_ready_and_applies_the_list_later() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    let api = start_api(&lab);
    api.add_node(node("node-0", Some("10.244.0.0/24")));
    let mut peer = node("node-1", Some("10.244.1.0/24"));
    publish(&mut peer, "192.168.100.77", "0a:58:0a:f4:01:00");
    api.add_node(peer);
    api.stall_lists(true);
    let mut opts = kube_opts(api.url(), &[("CONT_WHEN_CACHE_NOT_READY", "true")]);
    opts.tunables = Some(QUICK_SYNC.into());
    lab.start_weftd_with(0, opts);
    let subnet = lab.wait_ready(0);
    assert_eq!(subnet.to_string(), "10.244.0.0/24");
    let log = lab.weftd_log(0);
    assert!(
        log.contains("Timed out waiting for node controller sync. Continuing anyway."),
        "{log}"
    );
    assert!(
        !lab.vtep_routes(0)
            .iter()
            .any(|r| r.contains("10.244.1.0/24")),
        "{:?}",
        lab.vtep_routes(0)
    );
    api.stall_lists(false);
    wait_until(
        "the peer's route once the list came",
        Duration::from_secs(20),
        || {
            lab.vtep_routes(0)
                .iter()
                .any(|r| r.contains("10.244.1.0/24"))
        },
    );
    assert!(lab.weftd_pid(0).is_some());
}
