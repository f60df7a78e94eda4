//! End-to-end benchmark on real kernels: the same two-node netns topology,
//! alternating, in one run, between
//!   (a) bare veth (the ceiling),
//!   (b) flannel's kernel VXLAN, programmed exactly as flannel does, and
//!   (c) weft,
//! measuring iperf3 TCP with 1 and 4 streams, UDP packet rate with 64-byte
//! payloads, ping RTT p50/p99, weftd's CPU time per transferred GB and the
//! whole machine's CPU time per GB. Prints a table with weft/kernel ratios,
//! writes JSON and an SVG chart to `bench-results/`. A round whose kernel
//! VXLAN ran below 0.8x bare veth (TCP 1 stream) is marked DISTURBED and left
//! out of the medians (a loaded machine slows the reference too).
//!
//! Full run:   `cargo bench --bench e2e` (as root)   (WEFT_BENCH_ROUNDS, WEFT_BENCH_SECONDS)
//! Address family: WEFT_BENCH_FAMILY=ipv4 (the default), ipv6 or both. ipv6
//! runs the same three modes on a dual-stack underlay (`fd00:99::<n>`), all
//! IPv6: ping -6 / iperf3 between the nodes' underlay addresses; flannel's
//! kernel `flannel-v6.1` pair (VXLAN over the IPv6 underlay) measured between
//! the VTEP addresses `<v6 subnet>::`; weftd with a dual-stack net-conf
//! (`EnableIPv6`) measured between its `flannel-v6.1` addresses. `both` runs
//! IPv4 first, then IPv6, each in its own lab with its own rounds, disturbed
//! check and table. Files: `e2e.{json,svg}` for IPv4, `e2e-ipv6.{json,svg}`
//! for IPv6, and with `both` also `e2e-both.json`, keyed by family.
//! TCP congestion control: the namespaces' default (inherited from the host's
//! `net.ipv4.tcp_congestion_control`, printed and recorded), or the one named
//! by WEFT_BENCH_CC (`cubic`, `bbr`, ...; iperf3 `-C`), the same for every
//! mode. The figures depend on it: BBR paces, cubic does not.
//! Only some modes: WEFT_BENCH_MODES=kernel,weft. weftd with a tunables file
//! (to compare settings): WEFT_BENCH_TUNABLES=path/to/weftd.toml.
//! In `cargo test --all-targets` (no `--bench` flag) it does one short round,
//! so CI keeps the benchmark itself working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../netns-tests/harness.rs"]
#[allow(unreachable_pub)]
mod harness;

use harness::{KernelVtep, KernelVtep6, Lab, WeftdOpts, dual_net_conf, output_with_timeout};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Veth,
    Kernel,
    Weft,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Veth, Mode::Kernel, Mode::Weft];

    fn name(self) -> &'static str {
        match self {
            Mode::Veth => "bare veth",
            Mode::Kernel => "kernel vxlan (flannel)",
            Mode::Weft => "weft",
        }
    }

    /// The modes named in WEFT_BENCH_MODES (comma list of keys), else all.
    fn selected() -> Vec<Mode> {
        let Ok(list) = std::env::var("WEFT_BENCH_MODES") else {
            return Self::ALL.to_vec();
        };
        let modes: Vec<Mode> = Self::ALL
            .into_iter()
            .filter(|m| list.split(',').any(|k| k.trim() == m.key()))
            .collect();
        assert!(
            !modes.is_empty(),
            "WEFT_BENCH_MODES={list:?} names no mode; use veth, kernel, weft"
        );
        modes
    }

    fn key(self) -> &'static str {
        match self {
            Mode::Veth => "veth",
            Mode::Kernel => "kernel",
            Mode::Weft => "weft",
        }
    }
}

/// The address family of one table: underlay and overlay both IPv4, or both IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    V4,
    V6,
}

impl Family {
    /// The families named by WEFT_BENCH_FAMILY (ipv4, ipv6 or both), else IPv4.
    fn selected() -> Vec<Family> {
        match std::env::var("WEFT_BENCH_FAMILY").as_deref().map(str::trim) {
            Err(_) | Ok("" | "ipv4") => vec![Family::V4],
            Ok("ipv6") => vec![Family::V6],
            Ok("both") => vec![Family::V4, Family::V6],
            Ok(other) => panic!("WEFT_BENCH_FAMILY={other:?}: use ipv4, ipv6 or both"),
        }
    }

    fn key(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The file name stem of this family's JSON and SVG: IPv4 keeps the
    /// names it had before there was a family.
    fn file_tag(self, tag: &str) -> String {
        match self {
            Family::V4 => tag.to_owned(),
            Family::V6 => format!("{tag}-ipv6"),
        }
    }
}

/// One measurement of one mode in one round.
#[derive(Clone, Debug, Default)]
struct Sample {
    tcp1_gbps: f64,
    tcp4_gbps: f64,
    udp64_kpps: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    weftd_cpu_s_per_gb: Option<f64>,
    machine_cpu_s_per_gb: f64,
}

const METRICS: [(&str, &str, bool); 7] = [
    ("tcp1_gbps", "TCP 1 stream (Gbit/s)", true),
    ("tcp4_gbps", "TCP 4 streams (Gbit/s)", true),
    ("udp64_kpps", "UDP 64 B (kpps received)", true),
    ("rtt_p50_us", "ping RTT p50 (µs)", false),
    ("rtt_p99_us", "ping RTT p99 (µs)", false),
    ("weftd_cpu_s_per_gb", "weftd CPU s per GB", false),
    ("machine_cpu_s_per_gb", "machine CPU s per GB", false),
];

impl Sample {
    fn get(&self, key: &str) -> Option<f64> {
        match key {
            "tcp1_gbps" => Some(self.tcp1_gbps),
            "tcp4_gbps" => Some(self.tcp4_gbps),
            "udp64_kpps" => Some(self.udp64_kpps),
            "rtt_p50_us" => Some(self.rtt_p50_us),
            "rtt_p99_us" => Some(self.rtt_p99_us),
            "weftd_cpu_s_per_gb" => self.weftd_cpu_s_per_gb,
            "machine_cpu_s_per_gb" => Some(self.machine_cpu_s_per_gb),
            _ => None,
        }
    }
}

/// kernel/veth (single-stream TCP) below which a round is disturbed.
const DISTURBED_BELOW: f64 = 0.8;

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Busy CPU ticks of the whole machine (all CPUs).
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    cpu.iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum()
}

/// utime + stime of a process, in ticks.
fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn ticks_per_second() -> f64 {
    100.0
}

fn iperf3(
    lab: &Lab,
    client_ns: &str,
    server_ns: &str,
    server: IpAddr,
    args: &[&str],
    seconds: u64,
) -> serde_json::Value {
    let s = server.to_string();
    let mut server_cmd = Command::new("ip");
    server_cmd.args(["netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", &s]);
    let mut child = server_cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    std::thread::sleep(Duration::from_millis(300));
    let t = seconds.to_string();
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns", "exec", client_ns, "iperf3", "-c", &s, "-t", &t, "-J",
    ])
    .args(args);
    // UDP runs have no congestion control to pick.
    if let Some(cc) = congestion_control_override().filter(|_| !args.contains(&"-u")) {
        cmd.args(["-C", &cc]);
    }
    let out = output_with_timeout(&mut cmd, Duration::from_secs(seconds + 20));
    let _ = child.kill();
    let _ = child.wait();
    let _ = lab;
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("iperf3 output: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The congestion control WEFT_BENCH_CC names, if any.
fn congestion_control_override() -> Option<String> {
    std::env::var("WEFT_BENCH_CC")
        .ok()
        .map(|cc| cc.trim().to_owned())
        .filter(|cc| !cc.is_empty())
}

/// The congestion control the TCP runs use: WEFT_BENCH_CC, else the
/// namespaces' default, which a new namespace takes from the host.
fn congestion_control() -> String {
    congestion_control_override().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
            .map(|s| format!("{} (host default)", s.trim()))
            .unwrap_or_else(|_| "unknown".to_owned())
    })
}

fn rtts(lab: &Lab, ns: &str, target: IpAddr, count: u32) -> Vec<f64> {
    let c = count.to_string();
    let t = target.to_string();
    let family = if target.is_ipv6() { "-6" } else { "-4" };
    let out = lab.exec(ns, &["ping", family, "-c", &c, "-i", "0.01", "-W", "1", &t]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .filter_map(|ms| ms.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// Measures one mode between node 0 (client) and node 1 (server) addressed as `server`.
fn measure(lab: &Lab, server: IpAddr, seconds: u64, weftd: &[u32]) -> Sample {
    let (c, s) = (lab.ns(0).to_owned(), lab.ns(1).to_owned());
    let machine0 = machine_busy_ticks();
    let weftd0: u64 = weftd.iter().map(|p| process_ticks(*p)).sum();
    let one = iperf3(lab, &c, &s, server, &[], seconds);
    let machine1 = machine_busy_ticks();
    let weftd1: u64 = weftd.iter().map(|p| process_ticks(*p)).sum();
    let bytes = one["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    let gb = (bytes / 1e9).max(1e-9);
    let four = iperf3(lab, &c, &s, server, &["-P", "4"], seconds);
    let udp = iperf3(lab, &c, &s, server, &["-u", "-l", "64", "-b", "0"], seconds);
    let sum = &udp["end"]["sum"];
    let received =
        sum["packets"].as_f64().unwrap_or(0.0) - sum["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"].as_f64().unwrap_or(seconds as f64).max(0.001);
    let rtt = rtts(lab, &c, server, 300);
    Sample {
        tcp1_gbps: one["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9,
        tcp4_gbps: four["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9,
        udp64_kpps: received / secs / 1e3,
        rtt_p50_us: percentile(&rtt, 0.5),
        rtt_p99_us: percentile(&rtt, 0.99),
        weftd_cpu_s_per_gb: (!weftd.is_empty())
            .then(|| (weftd1 - weftd0) as f64 / ticks_per_second() / gb),
        machine_cpu_s_per_gb: (machine1 - machine0) as f64 / ticks_per_second() / gb,
    }
}

/// Waits until `target` answers a ping from node 0, in its family.
fn wait_reachable(lab: &Lab, target: IpAddr) {
    let timeout = Duration::from_secs(5);
    match target {
        IpAddr::V4(t) => lab.wait_ping(lab.ns(0), t, timeout),
        IpAddr::V6(t) => lab.wait_ping6(lab.ns(0), t, timeout),
    }
}

/// Programs nodes 0 and 1 as flannel's kernel backend does, in `family`, each
/// the other's peer; returns node 1's VTEP address (the measured target) and
/// the device to delete afterwards.
fn kernel_pair(lab: &Lab, family: Family) -> (IpAddr, String) {
    match family {
        Family::V4 => {
            let vteps = [
                KernelVtep {
                    vni: 1,
                    port: 4789,
                    subnet: "10.244.1.0/24".parse().expect("subnet"),
                    mac: "0e:fa:00:00:00:01".into(),
                },
                KernelVtep {
                    vni: 1,
                    port: 4789,
                    subnet: "10.244.2.0/24".parse().expect("subnet"),
                    mac: "0e:fa:00:00:00:02".into(),
                },
            ];
            for (i, v) in vteps.iter().enumerate() {
                let ns = lab.ns(i).to_owned();
                v.create(lab, &ns, lab.nodes[i].ip);
                let o = &vteps[1 - i];
                v.add_peer(lab, &ns, o.subnet, lab.nodes[1 - i].ip, &o.mac);
            }
            (vteps[1].subnet.network().into(), vteps[1].device())
        }
        Family::V6 => {
            let vteps = [
                KernelVtep6 {
                    vni: 1,
                    port: 4789,
                    subnet: "fd10:244:0:1::/64".parse().expect("subnet"),
                    mac: "0e:fa:00:00:06:01".into(),
                },
                KernelVtep6 {
                    vni: 1,
                    port: 4789,
                    subnet: "fd10:244:0:2::/64".parse().expect("subnet"),
                    mac: "0e:fa:00:00:06:02".into(),
                },
            ];
            for (i, v) in vteps.iter().enumerate() {
                let ns = lab.ns(i).to_owned();
                v.create(lab, &ns, lab.ip6(i));
                let o = &vteps[1 - i];
                v.add_peer(lab, &ns, o.subnet, lab.ip6(1 - i), &o.mac);
            }
            (vteps[1].subnet.network().into(), vteps[1].device())
        }
    }
}

fn run_mode(lab: &mut Lab, family: Family, mode: Mode, seconds: u64) -> Sample {
    match mode {
        Mode::Veth => {
            let target: IpAddr = match family {
                Family::V4 => lab.nodes[1].ip.into(),
                Family::V6 => lab.ip6(1).into(),
            };
            measure(lab, target, seconds, &[])
        }
        Mode::Kernel => {
            let (target, device) = kernel_pair(lab, family);
            wait_reachable(lab, target);
            let sample = measure(lab, target, seconds, &[]);
            for i in 0..2 {
                let ns = lab.ns(i).to_owned();
                lab.run(&ns, &["ip", "link", "del", &device]);
            }
            sample
        }
        Mode::Weft => {
            // In the IPv6 family the lab's net-conf is dual stack
            // (`dual_net_conf`): weftd runs both halves, the IPv6 one is measured.
            let opts = || WeftdOpts {
                tunables: std::env::var("WEFT_BENCH_TUNABLES").ok().map(|path| {
                    std::fs::read_to_string(&path)
                        .unwrap_or_else(|e| panic!("WEFT_BENCH_TUNABLES={path}: {e}"))
                }),
                ..WeftdOpts::default()
            };
            lab.start_weftd_with(0, opts());
            lab.wait_ready(0);
            lab.start_weftd_with(1, opts());
            let target: IpAddr = match family {
                Family::V4 => lab.wait_ready(1).network().into(),
                Family::V6 => lab.wait_ready_dual(1).1.network().into(),
            };
            wait_reachable(lab, target);
            let pids: Vec<u32> = (0..2).filter_map(|n| lab.weftd_pid(n)).collect();
            let sample = measure(lab, target, seconds, &pids);
            for i in 0..2 {
                lab.stop_weftd(i, nix::sys::signal::Signal::SIGTERM);
                let ns = lab.ns(i).to_owned();
                lab.run(&ns, &["ip", "link", "del", "flannel.1"]);
                if family == Family::V6 {
                    lab.run(&ns, &["ip", "link", "del", "flannel-v6.1"]);
                }
            }
            // Leases stay for the next round's weftd: same subnets, same MACs.
            sample
        }
    }
}

fn svg_chart(family: Family, medians: &BTreeMap<(Mode, &str), f64>) -> String {
    let panels: Vec<_> = METRICS
        .iter()
        .filter(|(k, _, _)| *k != "weftd_cpu_s_per_gb")
        .collect();
    let (pw, ph) = (300.0, 220.0);
    let cols = 3.0;
    let rows = (panels.len() as f64 / cols).ceil();
    let (w, h) = (pw * cols + 20.0, ph * rows + 60.0);
    let colors = [
        ("veth", "#9e9e9e"),
        ("kernel", "#1f77b4"),
        ("weft", "#d62728"),
    ];
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="16">{}: weft vs flannel's kernel VXLAN vs bare veth (medians)</text>"#,
        family.name()
    );
    for (i, (x, c)) in colors.iter().enumerate() {
        let lx = 10.0 + 160.0 * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="32" width="12" height="12" fill="{c}"/><text x="{}" y="43">{x}</text>"#,
            lx + 16.0
        );
    }
    for (p, (key, label, _)) in panels.iter().enumerate() {
        let (px, py) = (
            10.0 + pw * (p as f64 % cols),
            60.0 + ph * (p as f64 / cols).floor(),
        );
        // A mode left out by WEFT_BENCH_MODES has no value and no bar.
        let values: Vec<Option<f64>> = Mode::ALL
            .iter()
            .map(|m| medians.get(&(*m, *key)).copied())
            .collect();
        let max = values
            .iter()
            .flatten()
            .fold(0.0f64, |a, b| a.max(*b))
            .max(1e-9);
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" font-weight="bold">{label}</text>"#,
            px,
            py + 14.0
        );
        for (i, v) in values.iter().enumerate() {
            let Some(v) = v else { continue };
            let bh = (ph - 70.0) * v / max;
            let bx = px + 20.0 + i as f64 * 85.0;
            let by = py + ph - 30.0 - bh;
            let _ = write!(
                s,
                r#"<rect x="{bx}" y="{by}" width="60" height="{bh}" fill="{}"/><text x="{}" y="{}" text-anchor="middle">{:.3}</text>"#,
                colors[i].1,
                bx + 30.0,
                by - 4.0,
                v
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// One family's outcome: its printed table and its JSON report.
#[derive(Debug)]
struct FamilyResult {
    table: String,
    report: serde_json::Value,
    medians: BTreeMap<(Mode, &'static str), f64>,
}

/// Runs every round of `modes` in `family` in a lab of its own (dual stack
/// for IPv6) and summarises them.
fn bench_family(family: Family, modes: &[Mode], rounds: usize, seconds: u64) -> FamilyResult {
    let mut lab = match family {
        Family::V4 => Lab::new(2),
        Family::V6 => {
            let lab = Lab::new_dual(2);
            lab.set_net_conf(&dual_net_conf(4789));
            lab
        }
    };
    let mut samples: BTreeMap<Mode, Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
        for &mode in modes {
            eprintln!(
                "{} round {}/{rounds}: {}",
                family.name(),
                round + 1,
                mode.name()
            );
            let sample = run_mode(&mut lab, family, mode, seconds);
            eprintln!("  {sample:?}");
            samples.entry(mode).or_default().push(sample);
        }
    }
    // A round counts only when the reference is at its usual level: the
    // kernel's VXLAN at >= 0.8x bare veth (single-stream TCP). A loaded
    // machine slows the kernel path too, and a ratio against a slowed
    // reference flatters weft.
    let tcp1 = |mode: Mode, round: usize| {
        samples
            .get(&mode)
            .and_then(|l| l.get(round))
            .and_then(|s| s.get("tcp1_gbps"))
    };
    let disturbed: Vec<bool> = (0..rounds)
        .map(|r| match (tcp1(Mode::Kernel, r), tcp1(Mode::Veth, r)) {
            (Some(k), Some(v)) if v > 0.0 => k / v < DISTURBED_BELOW,
            _ => false,
        })
        .collect();
    drop(lab);
    eprintln!(
        "\n{}: round  kernel/veth  weft/kernel  (TCP 1 stream)",
        family.name()
    );
    for (r, &bad) in disturbed.iter().enumerate() {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".to_owned(),
        };
        eprintln!(
            "{:>5}  {:>11}  {:>11}  {}",
            r + 1,
            ratio(tcp1(Mode::Kernel, r), tcp1(Mode::Veth, r)),
            ratio(tcp1(Mode::Weft, r), tcp1(Mode::Kernel, r)),
            if bad {
                "DISTURBED (kernel/veth < 0.8): left out of the medians"
            } else {
                ""
            }
        );
    }
    let counted: Vec<usize> = match (0..rounds).filter(|&r| !disturbed[r]).collect::<Vec<_>>() {
        c if c.is_empty() => {
            eprintln!(
                "every round was DISTURBED (kernel/veth < 0.8): the medians below are of all rounds and do not count; run again on a quiet machine"
            );
            (0..rounds).collect()
        }
        c => c,
    };
    let mut medians = BTreeMap::new();
    for (mode, list) in &samples {
        for (key, _, _) in METRICS {
            let values = counted
                .iter()
                .filter_map(|&r| list.get(r).and_then(|s| s.get(key)))
                .collect();
            if let Some(m) = median(values) {
                medians.insert((*mode, key), m);
            }
        }
    }
    // The table.
    let mut table = String::new();
    let _ = writeln!(
        table,
        "\n{} (underlay and overlay {0}; TCP congestion control {})",
        family.name(),
        congestion_control()
    );
    let _ = writeln!(
        table,
        "{:<26} {:>12} {:>14} {:>12} {:>12} {:>12}",
        "metric (median)", "bare veth", "kernel vxlan", "weft", "weft/kernel", "kernel/veth"
    );
    let mut json_modes = serde_json::Map::new();
    for (key, label, _) in METRICS {
        let g = |m: Mode| medians.get(&(m, key)).copied();
        let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            table,
            "{:<26} {:>12} {:>14} {:>12} {:>12} {:>12}",
            label,
            fmt(g(Mode::Veth)),
            fmt(g(Mode::Kernel)),
            fmt(g(Mode::Weft)),
            ratio(g(Mode::Weft), g(Mode::Kernel)),
            ratio(g(Mode::Kernel), g(Mode::Veth))
        );
    }
    for &mode in modes {
        let runs: Vec<serde_json::Value> = samples[&mode]
            .iter()
            .map(|s| {
                serde_json::json!(
                    METRICS
                        .iter()
                        .map(|(k, _, _)| (k.to_string(), serde_json::json!(s.get(k))))
                        .collect::<serde_json::Map<_, _>>()
                )
            })
            .collect();
        let med: serde_json::Map<_, _> = METRICS
            .iter()
            .map(|(k, _, _)| (k.to_string(), serde_json::json!(medians.get(&(mode, k)))))
            .collect();
        json_modes.insert(
            mode.key().to_owned(),
            serde_json::json!({ "median": med, "runs": runs }),
        );
    }
    let ratio_of = |k: &str| match (
        medians.get(&(Mode::Weft, k)),
        medians.get(&(Mode::Kernel, k)),
    ) {
        (Some(a), Some(b)) if *b > 0.0 => Some(a / b),
        _ => None,
    };
    let verdict = serde_json::json!({
        "tcp1_weft_over_kernel": ratio_of("tcp1_gbps"),
        "tcp4_weft_over_kernel": ratio_of("tcp4_gbps"),
        "udp64_weft_over_kernel": ratio_of("udp64_kpps"),
        "rtt_p50_weft_over_kernel": ratio_of("rtt_p50_us"),
    });
    let report = serde_json::json!({
        "family": family.key(),
        "rounds": rounds,
        "disturbed_rounds": disturbed.iter().enumerate().filter(|(_, d)| **d).map(|(r, _)| r + 1).collect::<Vec<_>>(),
        "seconds": seconds,
        "congestion_control": congestion_control(),
        "kernel": String::from_utf8_lossy(&Command::new("uname").arg("-r").output().map(|o| o.stdout).unwrap_or_default()).trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "modes": json_modes,
        "verdict": verdict,
    });
    FamilyResult {
        table,
        report,
        medians,
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds: usize = std::env::var("WEFT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 3 } else { 1 });
    let seconds: u64 = std::env::var("WEFT_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 5 } else { 1 });
    let modes = Mode::selected();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results");
    std::fs::create_dir_all(&dir).expect("bench-results dir");
    let tag = if full { "e2e" } else { "e2e-smoke" };
    // Each family's table and files as soon as it is done: a failure in the
    // next family does not lose them.
    let mut results: Vec<(Family, FamilyResult)> = Vec::new();
    for family in Family::selected() {
        let result = bench_family(family, &modes, rounds, seconds);
        println!("{}", result.table);
        println!(
            "{} verdict (ratios, the figure that matters): {}",
            family.name(),
            result.report["verdict"]
        );
        let stem = family.file_tag(tag);
        std::fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(&result.report).expect("json"),
        )
        .expect("write json");
        std::fs::write(
            dir.join(format!("{stem}.svg")),
            svg_chart(family, &result.medians),
        )
        .expect("write svg");
        println!("wrote {0}/{stem}.json and {0}/{stem}.svg", dir.display());
        results.push((family, result));
    }
    if results.len() > 1 {
        let keyed: serde_json::Map<_, _> = results
            .iter()
            .map(|(f, r)| (f.key().to_owned(), r.report.clone()))
            .collect();
        let path = dir.join(format!("{tag}-both.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&keyed).expect("json"))
            .expect("write json");
        println!("wrote {} (keyed by family)", path.display());
    }
    // The smoke run must have moved traffic in every mode of every family.
    for (family, result) in &results {
        for &mode in &modes {
            let tcp = result
                .medians
                .get(&(mode, "tcp1_gbps"))
                .copied()
                .unwrap_or(0.0);
            assert!(
                tcp > 0.0,
                "{} {}: no TCP throughput",
                family.name(),
                mode.name()
            );
            let rtt = result
                .medians
                .get(&(mode, "rtt_p50_us"))
                .copied()
                .unwrap_or(f64::NAN);
            assert!(
                rtt.is_finite(),
                "{} {}: no ping replies",
                family.name(),
                mode.name()
            );
        }
    }
}
