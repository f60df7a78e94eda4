//! What an operator sees: metrics, `weftd status`, bounded logs.

use crate::harness::*;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

fn metrics_opts() -> WeftdOpts {
    WeftdOpts {
        extra: vec!["--healthz-port".into(), "9901".into()],
        ..WeftdOpts::default()
    }
}

fn scrape(lab: &Lab, node: usize) -> prometheus_parse::Scrape {
    let (code, body) = http_get(
        lab.ns(node),
        SocketAddrV4::new(lab.nodes[node].ip, 9901),
        "/metrics",
    );
    assert_eq!(code, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("metrics parse as Prometheus text")
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
}

#[test]
fn metrics_move_by_the_right_amounts_and_parse() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    lab.start_weftd_with(0, metrics_opts());
    let s0 = lab.wait_ready(0);
    lab.start_weftd_with(1, metrics_opts());
    let s1 = lab.wait_ready(1);
    lab.wait_ping(lab.ns(1), s0.network(), Duration::from_secs(5));
    let (code, _) = http_get(
        lab.ns(0),
        SocketAddrV4::new(lab.nodes[0].ip, 9901),
        "/readyz",
    );
    assert_eq!(code, 200);
    let (code, _) = http_get(
        lab.ns(0),
        SocketAddrV4::new(lab.nodes[0].ip, 9901),
        "/healthz",
    );
    assert_eq!(code, 200);

    let before = scrape(&lab, 0);
    assert_eq!(value(&before, "weft_peers", None), 1.0);
    assert_eq!(value(&before, "weft_fdb_entries", None), 1.0);
    assert_eq!(value(&before, "weft_arp_entries", None), 1.0);
    assert_eq!(value(&before, "weft_routes", None), 1.0);
    assert_eq!(value(&before, "weft_ready", None), 1.0);
    assert_eq!(value(&before, "weft_store_connected", None), 1.0);

    // 10 pings of 56 bytes each way, 5 wrong-VNI and 3 unknown-source datagrams.
    let ns1 = lab.ns(1).to_owned();
    assert!(lab.ping(&ns1, s0.network(), 10));
    let (our_mac, peer_mac) = lab.vtep_macs(0, s1);
    let target = SocketAddrV4::new(lab.nodes[0].ip, 4789);
    send_udp(
        &ns1,
        SocketAddrV4::new(lab.nodes[1].ip, 0),
        target,
        vec![vxlan_datagram(9, our_mac, peer_mac); 5],
    );
    let stranger = lab.add_host("x", Ipv4Addr::new(192, 168, 100, 50));
    send_udp(
        &stranger,
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 100, 50), 0),
        target,
        vec![vxlan_datagram(1, our_mac, peer_mac); 3],
    );
    // The datagrams are counted once weftd has read them: wait for the
    // counts to arrive, then check they are exact.
    let dropped = |text: &prometheus_parse::Scrape, reason: &str| {
        value(text, "weft_dropped_frames_total", Some(("reason", reason)))
            - value(
                &before,
                "weft_dropped_frames_total",
                Some(("reason", reason)),
            )
    };
    wait_for("the drops counted", Duration::from_secs(5), || {
        let now = scrape(&lab, 0);
        (dropped(&now, "wrong_vni") >= 5.0 && dropped(&now, "unknown_vtep") >= 3.0).then_some(())
    });
    // A moment more, so that a count too high shows too.
    std::thread::sleep(Duration::from_millis(300));
    let after = scrape(&lab, 0);
    let delta = |name: &str, label: Option<(&str, &str)>| {
        value(&after, name, label) - value(&before, name, label)
    };
    assert_eq!(
        delta("weft_dropped_frames_total", Some(("reason", "wrong_vni"))),
        5.0
    );
    assert_eq!(
        delta(
            "weft_dropped_frames_total",
            Some(("reason", "unknown_vtep"))
        ),
        3.0
    );
    for reason in [
        "too_short",
        "bad_flags",
        "spoofed_source_mac",
        "not_for_us",
        "no_fdb_entry",
        "tap_error",
        "socket_error",
    ] {
        assert_eq!(
            delta("weft_dropped_frames_total", Some(("reason", reason))),
            0.0,
            "{reason} moved"
        );
    }
    // Echo requests in, replies out (ARP may add a few frames).
    let decap = delta("weft_decapsulated_frames_total", None);
    let encap = delta("weft_encapsulated_frames_total", None);
    assert!((10.0..=13.0).contains(&decap), "decap {decap}");
    assert!((10.0..=13.0).contains(&encap), "encap {encap}");
    // ICMP echo: 14 Ethernet + 20 IP + 8 ICMP + 56 data = 98 bytes per frame.
    let decap_bytes = delta("weft_decapsulated_bytes_total", None);
    assert!(
        (980.0..=980.0 + 3.0 * 98.0).contains(&decap_bytes),
        "decap bytes {decap_bytes}"
    );
    // The offload gauges say what `weftd status` says is on.
    let offloads = lab.status(0)["offloads"].clone();
    for (name, on) in offloads.as_object().unwrap() {
        let want = if on.as_bool().unwrap() { 1.0 } else { 0.0 };
        let got = value(&after, "weft_offload_enabled", Some(("offload", name)));
        assert_eq!(got, want, "{name}");
    }
    assert!(
        value(
            &after,
            "weft_build_info",
            Some(("version", env!("CARGO_PKG_VERSION")))
        ) == 1.0
    );
}

#[test]
fn status_lists_peers_follows_departures_and_answers_with_the_store_gone() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(3);
    let subnets: Vec<_> = (0..3).map(|n| lab.start_weftd(n)).collect();
    let status = wait_for("two peers in status", Duration::from_secs(5), || {
        let s = lab.status(0);
        (s["peers"].as_object().map(|p| p.len()) == Some(2)).then_some(s)
    });
    for m in 1..3 {
        let peer = &status["peers"][subnets[m].to_string()];
        assert_eq!(peer["public_ip"], lab.nodes[m].ip.to_string());
        let mac = lab.status(m)["lease"]["vtep_mac"].clone();
        assert_eq!(peer["vtep_mac"], mac);
        assert_eq!(peer["route"], true);
    }
    assert_eq!(status["store"]["kind"], "local");
    assert_eq!(status["ready"], true);
    // Human output has the same peers.
    let sock = lab.status_socket(0).display().to_string();
    let text = String::from_utf8(
        std::process::Command::new(WEFTD)
            .args(["status", "--status-socket", &sock])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        text.contains(&subnets[1].to_string()) && text.contains("PEERS (2)"),
        "{text}"
    );

    lab.stop_weftd(2, nix::sys::signal::Signal::SIGTERM);
    std::fs::remove_file(lab.store_dir().join(format!("{}-24", subnets[2].network()))).unwrap();
    wait_for(
        "status to drop the departed node",
        Duration::from_secs(3),
        || {
            lab.status(0)["peers"]
                .get(subnets[2].to_string())
                .is_none()
                .then_some(())
        },
    );

    // The store goes away: status still answers, says so, and keeps the peer.
    let moved = lab.dir.path().join("leases-away");
    std::fs::rename(lab.store_dir(), &moved).unwrap();
    let s = wait_for(
        "store to be reported unreachable",
        Duration::from_secs(3),
        || {
            let s = lab.status(0);
            (s["store_stats"]["connected"] == false).then_some(s)
        },
    );
    assert!(s["peers"].get(subnets[1].to_string()).is_some());
    assert!(
        lab.ping(lab.ns(0), subnets[1].network(), 2),
        "dataplane stopped with the store"
    );
    std::fs::rename(&moved, lab.store_dir()).unwrap();
    wait_for("store to be healthy again", Duration::from_secs(3), || {
        (lab.status(0)["store_stats"]["connected"] == true).then_some(())
    });
}

#[test]
fn a_garbage_flood_produces_a_bounded_number_of_log_lines() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    lab.start_weftd(0);
    let target = SocketAddrV4::new(lab.nodes[0].ip, 4789);
    let attacker = lab.add_host("x", Ipv4Addr::new(192, 168, 100, 66));
    let lines_before = lab.weftd_log(0).lines().count();
    let started = Instant::now();
    in_netns(&attacker, move || {
        let socket = std::net::UdpSocket::bind("192.168.100.66:0").unwrap();
        let mut sent = 0u64;
        let mut payload = [0u8; 100];
        while started.elapsed() < Duration::from_secs(4) {
            payload[0] = (sent % 256) as u8;
            let _ = socket.send_to(&payload[..(sent % 100) as usize], target);
            sent += 1;
        }
        assert!(sent > 1000, "flood too small: {sent}");
    });
    std::thread::sleep(Duration::from_secs(1));
    let drops = lab.status(0)["counters"]["drops"].clone();
    let total: u64 = drops
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(total > 1000, "the flood was not counted: {drops}");
    let new_lines = lab.weftd_log(0).lines().count() - lines_before;
    // One summary per 10 s interval at most: a few lines, not thousands.
    assert!(
        new_lines <= 3,
        "{new_lines} log lines for a flood of {total} datagrams:\n{}",
        lab.weftd_log(0)
    );
}

/// `--log-format json`: every line weftd logs is a JSON object with a level and a message.
#[test]
fn json_logs_are_one_object_per_line() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    let json = WeftdOpts {
        extra: vec!["--log-format".into(), "json".into()],
        ..WeftdOpts::default()
    };
    lab.start_weftd_with(0, json.clone());
    lab.wait_ready(0);
    lab.start_weftd_with(1, json);
    let s1 = lab.wait_ready(1);
    lab.wait_ping(lab.ns(0), s1.network(), Duration::from_secs(5));
    let log = lab.weftd_log(0);
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 4, "{log}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("\"lease added\"")), "{log}");
    assert!(
        lines.iter().any(|l| l.contains("\"route programmed\"")),
        "{log}"
    );
}

/// A second weftd started with the running agent's `--status-socket` refuses
/// with a message naming the flag and leaves the running agent's socket, device
/// and traffic alone; one started after the agent was killed takes over the
/// socket the dead agent left.
#[test]
fn a_second_agent_on_the_same_status_socket_refuses_and_the_first_keeps_running() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    let s0 = lab.start_weftd(0);
    let s1 = lab.start_weftd(1);
    lab.wait_ping(lab.ns(0), s1.network(), Duration::from_secs(10));
    let first = lab.weftd_pid(1);
    let args = lab.weftd_args(1, &WeftdOpts::default());
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", lab.ns(1), WEFTD]).args(&args);
    let out = output_with_timeout(&mut cmd, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second agent ran: {stderr}");
    let pid = first.unwrap().to_string();
    assert!(
        stderr.contains("another weftd (pid ")
            && stderr.contains(&pid)
            && stderr.contains("--status-socket"),
        "{stderr}"
    );
    // The first agent still answers on its socket and still forwards.
    assert_eq!(lab.status(1)["pid"].as_u64(), first.map(u64::from));
    assert!(lab.ping(lab.ns(0), s1.network(), 3));
    assert!(lab.ping(lab.ns(1), s0.network(), 3));
    // After a SIGKILL the socket file stays behind; the next agent replaces it.
    lab.stop_weftd(1, nix::sys::signal::Signal::SIGKILL);
    assert!(lab.status_socket(1).exists());
    assert_eq!(lab.start_weftd(1), s1);
    assert!(lab.ping(lab.ns(0), s1.network(), 3));
}
