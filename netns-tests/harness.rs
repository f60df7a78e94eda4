//! The netns lab: real kernels, real devices, real `weftd` processes.
//!
//! A [`Lab`] is one underlay (a namespace holding bridge `br0`,
//! 192.168.100.254/24) and any number of node namespaces, each wired to the
//! bridge by a veth (`eth0`, 192.168.100.<n>/24, default route via .254).
//! A dual-stack lab ([`Lab::new_dual`]) adds IPv6 to the same wires
//! (`fd00:99::<n>/64`, default route via `fd00:99::fe`).
//! Names carry the test process's pid and a counter, so tests run in parallel;
//! dropping the lab kills every process it started and deletes every namespace
//! (and with them their links, TAP devices and routes), also when the test
//! panics. Namespaces left by a test process that died are swept by the next
//! lab.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");
pub const WEFT_CNI: &str = env!("CARGO_BIN_EXE_weft-cni");
pub const UNDERLAY_GW: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 254);
/// The underlay bridge's IPv6 address in a dual-stack lab ([`Lab::new_dual`]).
pub const UNDERLAY_GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0xfe);
/// The net-conf.json the tests use unless they write their own.
pub const DEFAULT_NET_CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

static LABS: AtomicUsize = AtomicUsize::new(0);

/// Tunables that turn every offload off, run each worker's two directions on
/// one thread, busy-poll 50 µs after traffic and verify every received
/// frame's inner checksums (the other dataplane shape, against the defaults).
pub const OFFLOADS_OFF: &str = "[dataplane]\ntap_vnet_hdr = false\ntso = false\nuso = false\nudp_gso = false\nudp_gro = false\nsplit_directions = false\nbusy_poll_us = 50\ntrust_outer_checksum = false\n";

/// `WEFT_TEST_OFFLOADS=off` runs every weftd of the suite with all offloads
/// off and one thread per worker (test.sh runs the netns suite both ways);
/// tests that pass their own tunables keep them.
pub fn offloads_forced_off() -> bool {
    std::env::var("WEFT_TEST_OFFLOADS").is_ok_and(|v| v == "off")
}

/// Whether this process runs as root (uid 0).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .is_some_and(|uid| uid == "0")
}

/// Whether this is a CI run (`CI` set, as CI systems and `.ci/run` do).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// How to run the suite, for the messages below.
const HOW: &str =
    "run them as root: sudo -E cargo test --test netns (or scripts/test.sh, what CI runs)";

/// Fails (never skips) when the tests cannot do their job.
pub fn require_root() {
    assert!(
        is_root(),
        "the netns tests need root (network namespaces, TAP devices); {HOW}"
    );
}

/// Called first by every test that needs root: true when the test is to be
/// skipped, because this is not root and not CI (a contributor's plain
/// `cargo test`); the first skip says so on the terminal. Under CI a run
/// without root fails instead: a suite that skips itself in CI does not exist.
pub fn skip_without_root() -> bool {
    if is_root() {
        return false;
    }
    assert!(
        !in_ci(),
        "CI is set but this is not root: the netns tests are never skipped in CI; {HOW}"
    );
    static TOLD: std::sync::Once = std::sync::Once::new();
    TOLD.call_once(|| {
        // Straight to stderr: the test harness captures `eprintln!` of passing tests.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\nnetns: SKIPPED every test that needs root (network namespaces, veth, TAP devices, real weftd processes): not root, and CI is not set; they are reported as passed without having run. To {HOW}.\n"
        );
    });
    true
}

/// Runs `cmd`, killing it after `timeout`.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    output_with_input(cmd, None, timeout)
}

/// Runs `cmd` with `input` on its stdin (none: /dev/null), killing it after `timeout`.
pub fn output_with_input(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let writer = input.map(|input| {
        let mut pipe = child.stdin.take().expect("piped");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        })
    });
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            eprintln!("timed out after {timeout:?}: {cmd:?}");
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Runs `f` on a thread that has entered namespace `ns`; sockets it creates live there.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node namespace.
#[derive(Debug, Clone)]
pub struct Node {
    pub ns: String,
    pub ip: Ipv4Addr,
    /// The node's underlay IPv6 address (`fd00:99::<n>`), in a dual-stack lab only.
    pub ip6: Option<Ipv6Addr>,
}

/// A running weftd.
#[derive(Debug)]
pub struct Weftd {
    pub child: Child,
    pub args: Vec<String>,
    pub log: PathBuf,
}

/// Options for one weftd.
#[derive(Debug, Clone, Default)]
pub struct WeftdOpts {
    /// Extra flags after the lab's own.
    pub extra: Vec<String>,
    /// Tunables file content (TOML), if any.
    pub tunables: Option<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Leave out the lab's `--local-store` (other stores).
    pub no_local_store: bool,
}

/// One test's world.
#[derive(Debug)]
pub struct Lab {
    pub prefix: String,
    pub underlay: String,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    hosts: Vec<String>,
    children: Vec<Child>,
    weftds: BTreeMap<usize, Weftd>,
    /// Whether the underlay also carries IPv6 ([`Lab::new_dual`]).
    dual_stack: bool,
}

fn ip(args: &[&str]) -> Output {
    output_with_timeout(Command::new("ip").args(args), Duration::from_secs(10))
}

fn must(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes namespaces (and kills their processes) left by test processes that no longer exist.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("wt-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete_ns(&name);
    }
}

/// IPv4 settings every namespace of a lab starts with, whatever the host has.
///
/// A new namespace copies `net.ipv4.conf.{all,default}` from the host's
/// initial namespace (`net.core.devconf_inherit_init_net = 0`, the kernel's
/// default), so a host that forwards (a container runtime turned it on, or an
/// operator) would make the underlay a router: it then answers the packets a
/// node sends towards a peer subnet before weftd has routed it (they follow
/// the default route to 192.168.100.254) with ICMP "net unreachable", and a
/// `ping -w` gives up at the first such error. A host with strict `rp_filter`
/// would drop replies that come back another way than they left (the kernel
/// VTEP answers a node's eth0 address over the underlay). Tests must not
/// depend on either: every namespace starts as on a fresh host, and where a
/// node needs forwarding for pods, the CNI bridge plugin turns it on, as on a
/// real node.
const NS_IPV4_SETTINGS: [&str; 4] = [
    "net.ipv4.conf.all.forwarding=0",
    "net.ipv4.conf.default.forwarding=0",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
];

/// IPv6 settings of every namespace of a dual-stack lab: IPv6 on, no
/// forwarding (as [`NS_IPV4_SETTINGS`]; the CNI bridge plugin turns it on
/// where pods need it), no router advertisements taken from anyone.
const NS_IPV6_SETTINGS: [&str; 6] = [
    "net.ipv6.conf.all.disable_ipv6=0",
    "net.ipv6.conf.default.disable_ipv6=0",
    "net.ipv6.conf.all.forwarding=0",
    "net.ipv6.conf.default.forwarding=0",
    "net.ipv6.conf.all.accept_ra=0",
    "net.ipv6.conf.default.accept_ra=0",
];

/// Applies [`NS_IPV6_SETTINGS`] in namespace `name` (dual-stack labs only).
fn set_ipv6_settings(name: &str) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", name, "sysctl", "-q", "-w"])
        .args(NS_IPV6_SETTINGS);
    must(
        output_with_timeout(&mut cmd, Duration::from_secs(10)),
        "set the namespace's IPv6 settings",
    );
}

/// Creates namespace `name` with the lab's IPv4 settings ([`NS_IPV4_SETTINGS`]).
fn add_ns(name: &str) {
    must(ip(&["netns", "add", name]), "create namespace");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", name, "sysctl", "-q", "-w"])
        .args(NS_IPV4_SETTINGS);
    must(
        output_with_timeout(&mut cmd, Duration::from_secs(10)),
        "set the namespace's IPv4 settings",
    );
}

fn delete_ns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = ip(&["netns", "del", name]);
}

impl Lab {
    /// A new underlay with `nodes` node namespaces.
    pub fn new(nodes: usize) -> Lab {
        Lab::build(nodes, false)
    }

    /// A new dual-stack underlay with `nodes` node namespaces: as [`Lab::new`],
    /// and besides every namespace on the bridge has an IPv6 address on its
    /// `eth0` (`fd00:99::<last octet of its IPv4 address, as a number>/64`,
    /// node `i` has `fd00:99::<i+1>`), added `nodad` so that it is usable at
    /// once, and an IPv6 default route via the bridge's [`UNDERLAY_GW6`].
    pub fn new_dual(nodes: usize) -> Lab {
        Lab::build(nodes, true)
    }

    /// Whether this lab's underlay carries IPv6 too.
    pub fn dual_stack(&self) -> bool {
        self.dual_stack
    }

    fn build(nodes: usize, dual_stack: bool) -> Lab {
        require_root();
        sweep_stale();
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("wt-{}-{n}", std::process::id());
        let underlay = format!("{prefix}-u");
        add_ns(&underlay);
        let mut lab = Lab {
            prefix,
            underlay: underlay.clone(),
            dir: tempfile::Builder::new()
                .prefix("weft-lab-")
                .tempdir()
                .expect("tempdir"),
            nodes: Vec::new(),
            hosts: Vec::new(),
            children: Vec::new(),
            weftds: BTreeMap::new(),
            dual_stack,
        };
        for cmd in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", "br0", "type", "bridge"],
            vec!["link", "set", "br0", "up"],
            vec!["addr", "add", "192.168.100.254/24", "dev", "br0"],
        ] {
            let mut args = vec!["-n", underlay.as_str()];
            args.extend(cmd);
            must(ip(&args), "set up the underlay");
        }
        if dual_stack {
            set_ipv6_settings(&underlay);
            let gw6 = format!("{UNDERLAY_GW6}/64");
            for cmd in [
                // No MLD snooping: the bridge floods neighbour solicitations
                // to every port, whatever the nodes reported (or not) yet.
                vec![
                    "link",
                    "set",
                    "br0",
                    "type",
                    "bridge",
                    "mcast_snooping",
                    "0",
                ],
                vec!["-6", "addr", "add", &gw6, "dev", "br0", "nodad"],
            ] {
                let mut args = vec!["-n", underlay.as_str()];
                args.extend(cmd);
                must(ip(&args), "set up the underlay's IPv6");
            }
        }
        std::fs::write(lab.net_conf_path(), DEFAULT_NET_CONF).expect("write net-conf");
        for _ in 0..nodes {
            lab.add_node();
        }
        lab
    }

    pub fn net_conf_path(&self) -> PathBuf {
        self.dir.path().join("net-conf.json")
    }

    pub fn set_net_conf(&self, text: &str) {
        std::fs::write(self.net_conf_path(), text).expect("write net-conf");
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("leases")
    }

    /// Wires a namespace `name` to the bridge with address `addr`; returns the namespace.
    fn attach(&mut self, name: &str, addr: Ipv4Addr, port: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        add_ns(&ns);
        must(
            ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                &ns,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                &self.underlay,
            ]),
            "create veth",
        );
        let u = self.underlay.clone();
        must(
            ip(&["-n", &u, "link", "set", port, "master", "br0", "up"]),
            "attach veth to bridge",
        );
        let cidr = format!("{addr}/24");
        must(
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]),
            "address eth0",
        );
        must(ip(&["-n", &ns, "link", "set", "eth0", "up"]), "eth0 up");
        must(ip(&["-n", &ns, "link", "set", "lo", "up"]), "lo up");
        must(
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &UNDERLAY_GW.to_string(),
            ]),
            "default route",
        );
        if let Some(addr6) = self.underlay_v6(addr) {
            set_ipv6_settings(&ns);
            let cidr6 = format!("{addr6}/64");
            must(
                ip(&[
                    "-n", &ns, "-6", "addr", "add", &cidr6, "dev", "eth0", "nodad",
                ]),
                "address eth0 (IPv6)",
            );
            must(
                ip(&[
                    "-n",
                    &ns,
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &UNDERLAY_GW6.to_string(),
                ]),
                "default route (IPv6)",
            );
        }
        ns
    }

    /// The underlay IPv6 address that goes with underlay IPv4 address `addr`
    /// in a dual-stack lab (`fd00:99::<last octet>`); none in an IPv4 lab.
    pub fn underlay_v6(&self, addr: Ipv4Addr) -> Option<Ipv6Addr> {
        self.dual_stack
            .then(|| Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, u16::from(addr.octets()[3])))
    }

    /// Adds a node namespace; returns its index (node `i` has address 192.168.100.`i+1`).
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let addr = Ipv4Addr::new(192, 168, 100, (i + 1) as u8);
        let ns = self.attach(&format!("n{i}"), addr, &format!("v{i}"));
        let ip6 = self.underlay_v6(addr);
        self.nodes.push(Node { ns, ip: addr, ip6 });
        i
    }

    /// Adds a plain host (not a weft node) on the underlay with address `addr`.
    pub fn add_host(&mut self, name: &str, addr: Ipv4Addr) -> String {
        let ns = self.attach(name, addr, &format!("h{}", self.hosts.len()));
        self.hosts.push(ns.clone());
        ns
    }

    pub fn ns(&self, node: usize) -> &str {
        &self.nodes[node].ns
    }

    /// Runs a command in a namespace (30 s limit).
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        output_with_timeout(&mut cmd, Duration::from_secs(30))
    }

    /// Runs a command in a namespace and returns its stdout; panics if it fails.
    pub fn run(&self, ns: &str, args: &[&str]) -> String {
        must(self.exec(ns, args), &format!("{args:?} in {ns}"))
    }

    /// Starts a background process in a namespace; it is killed when the lab drops.
    pub fn spawn(&mut self, ns: &str, args: &[&str], log: &str) -> usize {
        let log = File::create(self.dir.path().join(log)).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
        self.children.push(child);
        self.children.len() - 1
    }

    /// [`Lab::spawn`] for tcpdump: returns once it captures (it says
    /// "listening on" when the capture is open), so no packet sent after is
    /// missed; a fixed sleep could be too short on a loaded machine.
    pub fn spawn_capture(&mut self, ns: &str, args: &[&str], log: &str) -> usize {
        let id = self.spawn(ns, args, log);
        wait_for(
            &format!("{args:?} to capture"),
            Duration::from_secs(10),
            || self.read_log(log).contains("listening on").then_some(()),
        );
        id
    }

    /// The process id of a background process (`ip netns exec` execs the
    /// command, so it is the command's own).
    pub fn child_pid(&self, id: usize) -> u32 {
        self.children[id].id()
    }

    /// Waits for a background process to exit (with a limit) and returns whether it succeeded.
    pub fn wait_child(&mut self, id: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.children[id].try_wait().expect("wait") {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.children[id].kill();
                let _ = self.children[id].wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn read_log(&self, log: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default()
    }

    pub fn subnet_file(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("subnet-{node}.env"))
    }

    pub fn status_socket(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("weftd-{node}.sock"))
    }

    pub fn weftd_log_path(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("weftd-{node}.log"))
    }

    /// The standard arguments of node `node`'s weftd.
    pub fn weftd_args(&self, node: usize, opts: &WeftdOpts) -> Vec<String> {
        let mut args = vec![
            "--iface".to_owned(),
            "eth0".to_owned(),
            "--net-config-path".to_owned(),
            self.net_conf_path().display().to_string(),
            "--subnet-file".to_owned(),
            self.subnet_file(node).display().to_string(),
            "--status-socket".to_owned(),
            self.status_socket(node).display().to_string(),
        ];
        if !opts.no_local_store {
            args.push("--local-store".to_owned());
            args.push(self.store_dir().display().to_string());
        }
        let forced_off = offloads_forced_off().then(|| OFFLOADS_OFF.to_owned());
        if let Some(t) = opts.tunables.as_ref().or(forced_off.as_ref()) {
            let path = self.dir.path().join(format!("tunables-{node}.toml"));
            std::fs::write(&path, t).expect("write tunables");
            args.push("--tunables".to_owned());
            args.push(path.display().to_string());
        }
        args.extend(opts.extra.iter().cloned());
        args
    }

    /// Starts weftd on `node` (not waiting for readiness).
    pub fn start_weftd_with(&mut self, node: usize, opts: WeftdOpts) {
        let args = self.weftd_args(node, &opts);
        let log_path = self.weftd_log_path(node);
        let log = OpenOptionsAppend::open(&log_path);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.nodes[node].ns, WEFTD])
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn weftd");
        if let Some(mut old) = self.weftds.insert(
            node,
            Weftd {
                child,
                args,
                log: log_path,
            },
        ) {
            let _ = old.child.kill();
            let _ = old.child.wait();
        }
    }

    /// Starts weftd on `node` with default options and waits until it is ready.
    pub fn start_weftd(&mut self, node: usize) -> ipnet::Ipv4Net {
        self.start_weftd_with(node, WeftdOpts::default());
        self.wait_ready(node)
    }

    /// Waits until this node's current weftd reports ready and returns its subnet.
    pub fn wait_ready(&mut self, node: usize) -> ipnet::Ipv4Net {
        let status = self.wait_ready_status(node);
        let subnet = status["lease"]["subnet"].as_str().expect("lease subnet");
        subnet.parse().expect("subnet")
    }

    /// Waits until this node's current weftd reports ready and returns its
    /// `weftd status --json`. Panics with weftd's log if it exits first or
    /// is not ready after 30 s.
    pub fn wait_ready_status(&mut self, node: usize) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        let sock = self.status_socket(node).display().to_string();
        loop {
            let pid = self.weftd_pid(node);
            if let Some(w) = self.weftds.get_mut(&node)
                && let Some(status) = w.child.try_wait().expect("wait")
            {
                panic!(
                    "weftd on node {node} exited ({status}) before it was ready:\n{}",
                    self.weftd_log(node)
                );
            }
            let out = output_with_timeout(
                Command::new(WEFTD).args(["status", "--json", "--status-socket", &sock]),
                Duration::from_secs(5),
            );
            if let Ok(s) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                && s["ready"] == true
                && s["pid"].as_u64() == pid.map(u64::from)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "weftd on node {node} not ready after 30 s:\n{}",
                self.weftd_log(node)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn weftd_log(&self, node: usize) -> String {
        std::fs::read_to_string(self.weftd_log_path(node)).unwrap_or_default()
    }

    pub fn weftd_pid(&self, node: usize) -> Option<u32> {
        self.weftds.get(&node).map(|w| w.child.id())
    }

    /// Sends `signal` to node's weftd and waits for it to exit; returns its exit code.
    pub fn stop_weftd(&mut self, node: usize, signal: nix::sys::signal::Signal) -> Option<i32> {
        let mut w = self.weftds.remove(&node)?;
        let pid = nix::unistd::Pid::from_raw(w.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = w.child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = w.child.kill();
                let _ = w.child.wait();
                panic!("weftd on node {node} did not exit after {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A node's reboot as its network sees it: weftd killed; the node
    /// namespace, with every device, route and iptables/nftables rule in it
    /// (the CNI bridge, the pods' veths, the masquerade rules), replaced by a
    /// fresh one wired to the underlay as before (same name and address); and
    /// the subnet file gone (flannel's `/run/flannel` is a tmpfs). Files on
    /// disk (the lease store, CNI state directories in the lab dir) stay.
    pub fn reboot_node(&mut self, node: usize) {
        self.stop_weftd(node, nix::sys::signal::Signal::SIGKILL);
        let ns = self.nodes[node].ns.clone();
        delete_ns(&ns);
        let name = ns
            .strip_prefix(&format!("{}-", self.prefix))
            .expect("a node namespace is <prefix>-<name>")
            .to_owned();
        // The kernel dismantles a namespace asynchronously: its veth's peer
        // on the underlay goes a moment after `ip netns del`.
        let port = format!("v{node}");
        let underlay = self.underlay.clone();
        wait_for(
            "the old node's underlay port to go",
            Duration::from_secs(10),
            || {
                (!ip(&["-n", &underlay, "link", "show", &port])
                    .status
                    .success())
                .then_some(())
            },
        );
        let again = self.attach(&name, self.nodes[node].ip, &port);
        assert_eq!(again, ns);
        match std::fs::remove_file(self.subnet_file(node)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove the subnet file: {e}"),
        }
    }

    /// Waits for node's weftd to exit by itself; returns its exit code.
    pub fn wait_weftd_exit(&mut self, node: usize, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let w = self.weftds.get_mut(&node)?;
            if let Some(status) = w.child.try_wait().expect("wait") {
                self.weftds.remove(&node);
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "weftd on node {node} still running after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `weftd status --json` of a node.
    pub fn status(&self, node: usize) -> serde_json::Value {
        let sock = self.status_socket(node).display().to_string();
        let out = output_with_timeout(
            Command::new(WEFTD).args(["status", "--json", "--status-socket", &sock]),
            Duration::from_secs(10),
        );
        let text = must(out, "weftd status --json");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("status JSON: {e}: {text}"))
    }

    /// Node `node`'s `weftd status` as an operator reads it.
    pub fn status_text(&self, node: usize) -> String {
        let sock = self.status_socket(node).display().to_string();
        let out = output_with_timeout(
            Command::new(WEFTD).args(["status", "--status-socket", &sock]),
            Duration::from_secs(10),
        );
        must(out, "weftd status")
    }

    /// `(node's own VtepMAC, the VtepMAC node has for the peer leasing `peer`)`, from its status.
    pub fn vtep_macs(&self, node: usize, peer: ipnet::Ipv4Net) -> ([u8; 6], [u8; 6]) {
        let status = self.status(node);
        let own = status["lease"]["vtep_mac"].as_str().expect("own VtepMAC");
        let theirs = status["peers"][peer.to_string()]["vtep_mac"]
            .as_str()
            .expect("peer VtepMAC");
        (parse_mac(own), parse_mac(theirs))
    }

    /// Peer routes on node's VTEP device, as `ip route` prints them.
    pub fn vtep_routes(&self, node: usize) -> Vec<String> {
        let out = self.exec(
            self.ns(node),
            &["ip", "-4", "route", "show", "dev", "flannel.1"],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .collect()
    }

    /// Runs iperf3 TCP for `secs` seconds from node `client` (bound to `bind`)
    /// to a one-shot server on node `server` at `server_ip`, plus `extra` client
    /// flags; panics unless it succeeds; returns the JSON report.
    pub fn iperf3(
        &mut self,
        client: usize,
        bind: Ipv4Addr,
        server: usize,
        server_ip: Ipv4Addr,
        secs: u32,
        extra: &[&str],
    ) -> serde_json::Value {
        let (ns_c, ns_s) = (self.ns(client).to_owned(), self.ns(server).to_owned());
        let (ip, b, t) = (server_ip.to_string(), bind.to_string(), secs.to_string());
        let log = format!("iperf3-server-{}.log", self.children.len());
        self.iperf3_server(&ns_s, &ip, &log);
        let mut args = vec!["iperf3", "-c", &ip, "-t", &t, "-J", "-B", &b];
        args.extend_from_slice(extra);
        let out = self.exec(&ns_c, &args);
        assert!(
            out.status.success(),
            "iperf3 {args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).expect("iperf3 JSON")
    }

    /// Starts a one-shot iperf3 server on `addr` (either family) in `ns` and
    /// returns its child id once it listens. It first waits for an earlier
    /// one-shot server on that address to be gone (one exits a moment after
    /// its client does), so neither the bind nor the wait races it; a fixed
    /// sleep instead lost to a loaded machine.
    pub fn iperf3_server(&mut self, ns: &str, addr: &str, log: &str) -> usize {
        let listening = |lab: &Lab| {
            let out = lab.exec(ns, &["ss", "-Hltn", "sport", "= :5201"]);
            let (v4, v6) = (format!("{addr}:5201"), format!("[{addr}]:5201"));
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .any(|w| w == v4 || w == v6)
        };
        wait_for(
            "an earlier iperf3 server to exit",
            Duration::from_secs(10),
            || (!listening(self)).then_some(()),
        );
        let id = self.spawn(ns, &["iperf3", "-s", "-1", "-B", addr], log);
        wait_for(
            "the iperf3 server to listen",
            Duration::from_secs(10),
            || listening(self).then_some(()),
        );
        id
    }

    /// Pings `target` from namespace `ns`: `count` packets, true if all answered.
    pub fn ping(&self, ns: &str, target: Ipv4Addr, count: u32) -> bool {
        let c = count.to_string();
        let target = target.to_string();
        self.exec(
            ns,
            &["ping", "-c", &c, "-i", "0.2", "-W", "2", "-q", &target],
        )
        .status
        .success()
    }

    /// Pings until one reply comes back, or panics after `timeout`.
    pub fn wait_ping(&self, ns: &str, target: Ipv4Addr, timeout: Duration) {
        let target_s = target.to_string();
        wait_for(&format!("ping {target} from {ns}"), timeout, || {
            self.exec(ns, &["ping", "-c", "1", "-W", "1", "-q", &target_s])
                .status
                .success()
                .then_some(())
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in self.weftds.keys() {
                let log = self.weftd_log(*node);
                let tail: Vec<_> = log
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                eprintln!(
                    "---- weftd log, node {node} (last 40 lines) ----\n{}",
                    tail.join("\n")
                );
            }
        }
        for w in self.weftds.values_mut() {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for node in &self.nodes {
            delete_ns(&node.ns);
        }
        for host in &self.hosts {
            delete_ns(host);
        }
        delete_ns(&self.underlay);
    }
}

struct OpenOptionsAppend;

impl OpenOptionsAppend {
    fn open(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
    }
}

/// Sends raw UDP datagrams from namespace `ns`, bound to `src` (port 0 = any).
pub fn send_udp(
    ns: &str,
    src: std::net::SocketAddrV4,
    dst: std::net::SocketAddrV4,
    payloads: Vec<Vec<u8>>,
) {
    in_netns(ns, move || {
        let socket = std::net::UdpSocket::bind(src).expect("bind sender");
        for p in payloads {
            socket.send_to(&p, dst).expect("send");
        }
    });
}

/// The payload of datagram `i` of [`numbered_udp_bursts`]: its index, then a
/// pattern that differs per datagram, so a cut, mixed or shifted datagram shows.
pub fn numbered_payload(i: u32, len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|k| (i as usize * 31 + k) as u8).collect();
    p[..4].copy_from_slice(&i.to_be_bytes());
    p
}

/// Sends `bursts` bursts of `per_burst` numbered 200-byte UDP datagrams (the
/// first numbered `first`) from `src` in namespace `src_ns` to `dst`:5555 in
/// `dst_ns`, and returns what arrived there, in arrival order.
pub fn numbered_udp_bursts(
    src_ns: &str,
    src: Ipv4Addr,
    dst_ns: &str,
    dst: Ipv4Addr,
    first: u32,
    bursts: u32,
    per_burst: u32,
) -> Vec<Vec<u8>> {
    use std::net::{SocketAddrV4, UdpSocket};
    let dst = SocketAddrV4::new(dst, 5555);
    let src = SocketAddrV4::new(src, 0);
    let (src_ns, dst_ns) = (src_ns.to_owned(), dst_ns.to_owned());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || {
        in_netns(&dst_ns, move || {
            let sock = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )
            .expect("receiver socket");
            sock.set_recv_buffer_size(4 << 20).expect("SO_RCVBUF");
            sock.bind(&dst.into()).expect("bind receiver");
            let sock = UdpSocket::from(sock);
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            ready_tx.send(()).unwrap();
            let (mut got, mut buf) = (Vec::new(), [0u8; 2048]);
            while let Ok(n) = sock.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
            got
        })
    });
    ready_rx.recv().expect("receiver started");
    in_netns(&src_ns, move || {
        let sock = UdpSocket::bind(src).expect("bind sender");
        for b in 0..bursts {
            for k in 0..per_burst {
                let i = first + b * per_burst + k;
                sock.send_to(&numbered_payload(i, 200), dst).expect("send");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    receiver.join().expect("receiver thread")
}

/// Asserts that datagrams from [`numbered_udp_bursts`] arrived whole, in
/// order (one flow never overtakes itself), without duplicates, and at least
/// 98% of the `sent`.
pub fn check_numbered_datagrams(got: &[Vec<u8>], sent: u32) {
    let mut last = None;
    for p in got {
        assert!(p.len() >= 4, "a {}-byte datagram arrived", p.len());
        let i = u32::from_be_bytes(p[..4].try_into().unwrap());
        assert_eq!(p, &numbered_payload(i, 200), "datagram {i} arrived damaged");
        assert!(
            last.is_none_or(|l| i > l),
            "datagram {i} arrived after {last:?}: reordered or duplicated"
        );
        last = Some(i);
    }
    assert!(
        got.len() * 100 >= sent as usize * 98,
        "only {} of {sent} datagrams arrived",
        got.len()
    );
}

/// GETs `path` from `addr` inside namespace `ns` (plain HTTP/1.0) and returns (status, body).
pub fn http_get(ns: &str, addr: std::net::SocketAddrV4, path: &str) -> (u16, String) {
    let path = path.to_owned();
    in_netns(ns, move || {
        let mut stream = std::net::TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
            .expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("response");
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    })
}

/// An Ethernet frame carrying a minimal IPv4 packet, for hand-made VXLAN datagrams.
pub fn vxlan_datagram(vni: u32, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let v = vni.to_be_bytes();
    let mut d = vec![0x08, 0, 0, 0, v[1], v[2], v[3], 0];
    d.extend_from_slice(&dst_mac);
    d.extend_from_slice(&src_mac);
    d.extend_from_slice(&[0x08, 0x00]);
    d.extend_from_slice(&[
        0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 99, 0, 1, 10, 99, 0, 2,
    ]);
    d
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (o, part) in out.iter_mut().zip(s.split(':')) {
        *o = u8::from_str_radix(part, 16).expect("mac");
    }
    out
}

/// A VTEP programmed exactly as flannel's vxlan backend programs the kernel
/// (flannel-compat.md §5): a kernel `vxlan` device `flannel.<VNI>` with
/// `nolearning`, the local address, the configured port, MTU − 50,
/// address `S.0/32`; per remote lease a permanent neighbour `S.0 → MAC`, a
/// `self permanent` FDB entry `MAC → public IP`, and `S via S.0 onlink`.
#[derive(Debug, Clone)]
pub struct KernelVtep {
    pub vni: u32,
    pub port: u16,
    pub subnet: ipnet::Ipv4Net,
    pub mac: String,
}

impl KernelVtep {
    pub fn device(&self) -> String {
        format!("flannel.{}", self.vni)
    }

    /// Creates and configures the device in `ns`, whose underlay address is `local`.
    pub fn create(&self, lab: &Lab, ns: &str, local: Ipv4Addr) {
        let dev = self.device();
        let vni = self.vni.to_string();
        let port = self.port.to_string();
        let local = local.to_string();
        lab.run(
            ns,
            &[
                "ip",
                "link",
                "add",
                &dev,
                "type",
                "vxlan",
                "id",
                &vni,
                "local",
                &local,
                "dev",
                "eth0",
                "dstport",
                &port,
                "nolearning",
                "ttl",
                "auto",
            ],
        );
        lab.run(
            ns,
            &[
                "ip", "link", "set", &dev, "address", &self.mac, "mtu", "1450",
            ],
        );
        let addr = format!("{}/32", self.subnet.network());
        lab.run(ns, &["ip", "addr", "add", &addr, "dev", &dev]);
        lab.run(ns, &["ip", "link", "set", &dev, "up"]);
    }

    /// Programs a remote lease: neighbour, FDB entry, then the route (flannel's order).
    pub fn add_peer(
        &self,
        lab: &Lab,
        ns: &str,
        subnet: ipnet::Ipv4Net,
        public_ip: Ipv4Addr,
        mac: &str,
    ) {
        let dev = self.device();
        let gw = subnet.network().to_string();
        lab.run(
            ns,
            &[
                "ip",
                "neigh",
                "replace",
                &gw,
                "lladdr",
                mac,
                "dev",
                &dev,
                "nud",
                "permanent",
            ],
        );
        lab.run(
            ns,
            &[
                "bridge",
                "fdb",
                "replace",
                mac,
                "dev",
                &dev,
                "dst",
                &public_ip.to_string(),
                "self",
                "permanent",
            ],
        );
        lab.run(
            ns,
            &[
                "ip",
                "route",
                "replace",
                &subnet.to_string(),
                "via",
                &gw,
                "dev",
                &dev,
                "onlink",
            ],
        );
    }

    /// Removes a remote lease (flannel's order: neighbour, FDB, route).
    pub fn remove_peer(
        &self,
        lab: &Lab,
        ns: &str,
        subnet: ipnet::Ipv4Net,
        public_ip: Ipv4Addr,
        mac: &str,
    ) {
        let dev = self.device();
        let gw = subnet.network().to_string();
        let _ = lab.exec(ns, &["ip", "neigh", "del", &gw, "lladdr", mac, "dev", &dev]);
        let _ = lab.exec(
            ns,
            &[
                "bridge",
                "fdb",
                "del",
                mac,
                "dev",
                &dev,
                "dst",
                &public_ip.to_string(),
                "self",
            ],
        );
        let _ = lab.exec(
            ns,
            &[
                "ip",
                "route",
                "del",
                &subnet.to_string(),
                "via",
                &gw,
                "dev",
                &dev,
                "onlink",
            ],
        );
    }

    /// The lease JSON flannel would publish for this VTEP.
    pub fn lease_json(&self, public_ip: Ipv4Addr) -> String {
        format!(
            r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{},"VtepMAC":"{}"}}}}"#,
            self.vni, self.mac
        )
    }
}

// ---------------------------------------------------------------------------
// CNI: pods wired by weft-cni as a container runtime does (netns-tests/cni.rs)
// ---------------------------------------------------------------------------

/// Where Debian's `containernetworking-plugins` puts the reference plugins.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

/// `CNI_PATH` for the tests: the directory holding the built `weft-cni`, then the reference plugins.
pub fn cni_path() -> String {
    let dir = Path::new(WEFT_CNI)
        .parent()
        .expect("weft-cni has a directory");
    format!("{}:{CNI_PLUGIN_DIR}", dir.display())
}

/// What a plugin invocation returned.
#[derive(Debug, Clone)]
pub struct CniOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutput {
    /// The stdout as JSON (a result, or an error result).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "plugin stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Panics with the plugin's error unless it succeeded.
    pub fn ok(self) -> CniOutput {
        assert!(
            self.success,
            "plugin failed: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs a plugin binary inside a node namespace as a runtime does: the `CNI_*`
/// variables in `env` (and no others from the test's environment), `stdin` on
/// stdin. `wrapper` is an optional `sh -c` prefix run before `exec`ing the plugin.
pub fn run_plugin(
    node_ns: &str,
    plugin: &str,
    env: &[(&str, &str)],
    stdin: &str,
    wrapper: Option<&str>,
) -> CniOutput {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node_ns]);
    match wrapper {
        Some(script) => {
            cmd.args(["sh", "-c", &format!("{script}\nexec \"$0\""), plugin]);
        }
        None => {
            cmd.arg(plugin);
        }
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("CNI_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = output_with_input(&mut cmd, Some(stdin.as_bytes()), Duration::from_secs(30));
    let status = out.status;
    let (out_bytes, err_bytes) = (out.stdout, out.stderr);
    CniOutput {
        success: status.success(),
        stdout: String::from_utf8_lossy(&out_bytes).trim().to_owned(),
        stderr: String::from_utf8_lossy(&err_bytes).into_owned(),
    }
}

/// Pod namespaces; deleted on drop (also on panic). Named `<lab prefix>-p<n>`,
/// so a dead test process's pods are swept with its lab.
#[derive(Debug, Default)]
pub struct PodNamespaces {
    names: Vec<String>,
}

impl PodNamespaces {
    /// Creates `<lab prefix>-<name>` with `lo` up.
    pub fn create(&mut self, lab: &Lab, name: &str) -> String {
        let ns = format!("{}-{name}", lab.prefix);
        add_ns(&ns);
        self.names.push(ns.clone());
        must(ip(&["-n", &ns, "link", "set", "lo", "up"]), "pod lo up");
        ns
    }
}

impl Drop for PodNamespaces {
    fn drop(&mut self) {
        for ns in &self.names {
            delete_ns(ns);
        }
    }
}

/// A runtime's call of one plugin for one container.
#[derive(Debug, Clone)]
pub struct CniCall<'a> {
    pub node_ns: &'a str,
    pub container_id: &'a str,
    pub pod_ns: &'a str,
    pub ifname: &'a str,
}

impl CniCall<'_> {
    /// Runs `plugin` for `command` with `config` on stdin.
    pub fn run(
        &self,
        plugin: &str,
        command: &str,
        config: &str,
        wrapper: Option<&str>,
    ) -> CniOutput {
        let netns = format!("/run/netns/{}", self.pod_ns);
        let path = cni_path();
        run_plugin(
            self.node_ns,
            plugin,
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", self.container_id),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", self.ifname),
                ("CNI_PATH", &path),
            ],
            config,
            wrapper,
        )
    }

    /// `weft-cni` for `command`.
    pub fn weft(&self, command: &str, config: &str) -> CniOutput {
        self.run(WEFT_CNI, command, config, None)
    }
}

/// The first IPv4 address of an ADD result (any result version).
pub fn result_ipv4(result: &serde_json::Value) -> (Ipv4Addr, ipnet::Ipv4Net) {
    let address = result["ips"]
        .as_array()
        .and_then(|ips| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str())
                .find(|a| !a.contains(':'))
        })
        .unwrap_or_else(|| panic!("no IPv4 address in {result}"));
    let net: ipnet::Ipv4Net = address.parse().expect("address/prefix");
    (net.addr(), net)
}

/// A minimal conflist runtime (what libcni does): each plugin of the list in
/// order for ADD with `name`, `cniVersion`, the previous result as
/// `prevResult` and `runtimeConfig` from the capabilities it declares; in
/// reverse for DEL (with the cached result as `prevResult` from 0.4.0 on).
#[derive(Debug, Clone)]
pub struct ConfList {
    pub list: serde_json::Value,
    /// Shell run before each plugin (a private view of default paths).
    pub wrapper: Option<String>,
    /// Where the plugins are, before the standard ones (default: weft-cni is
    /// the one this test build made).
    pub bin_dir: Option<PathBuf>,
}

impl ConfList {
    fn plugin_config(
        &self,
        plugin: &serde_json::Value,
        prev: Option<&serde_json::Value>,
        runtime_config: &serde_json::Value,
    ) -> (String, String) {
        let mut conf = plugin.clone();
        let obj = conf.as_object_mut().expect("plugin object");
        obj.insert("name".into(), self.list["name"].clone());
        obj.insert("cniVersion".into(), self.list["cniVersion"].clone());
        if let Some(prev) = prev {
            obj.insert("prevResult".into(), prev.clone());
        }
        let mut rc = serde_json::Map::new();
        if let Some(caps) = plugin["capabilities"].as_object() {
            for (cap, on) in caps {
                if on == true && !runtime_config[cap].is_null() {
                    rc.insert(cap.clone(), runtime_config[cap].clone());
                }
            }
        }
        if !rc.is_empty() {
            obj.insert("runtimeConfig".into(), serde_json::Value::Object(rc));
        }
        let ty = plugin["type"].as_str().expect("plugin type").to_owned();
        let binary = match &self.bin_dir {
            Some(dir) if dir.join(&ty).exists() => dir.join(&ty).display().to_string(),
            None if ty == "weft-cni" => WEFT_CNI.to_owned(),
            _ => format!("{CNI_PLUGIN_DIR}/{ty}"),
        };
        (binary, conf.to_string())
    }

    fn plugins(&self) -> Vec<serde_json::Value> {
        self.list["plugins"].as_array().expect("plugins").clone()
    }

    /// ADD through the list; returns the last result.
    pub fn add(&self, call: &CniCall<'_>, runtime_config: &serde_json::Value) -> serde_json::Value {
        let mut prev: Option<serde_json::Value> = None;
        for plugin in self.plugins() {
            let (binary, conf) = self.plugin_config(&plugin, prev.as_ref(), runtime_config);
            let out = call
                .run(&binary, "ADD", &conf, self.wrapper.as_deref())
                .ok();
            prev = Some(out.json());
        }
        prev.expect("a result")
    }

    /// DEL through the list in reverse.
    pub fn del(
        &self,
        call: &CniCall<'_>,
        runtime_config: &serde_json::Value,
        cached: &serde_json::Value,
    ) {
        let version = self.list["cniVersion"].as_str().unwrap_or("");
        let with_prev = !version.starts_with("0.3") && !version.is_empty();
        for plugin in self.plugins().iter().rev() {
            let prev = with_prev.then_some(cached);
            let (binary, conf) = self.plugin_config(plugin, prev, runtime_config);
            call.run(&binary, "DEL", &conf, self.wrapper.as_deref())
                .ok();
        }
    }
}

/// Listens on `listen` in `server_ns`, connects from `client_ns` to
/// `connect_to`, exchanges a line both ways and returns the source address the
/// server saw.
pub fn tcp_source_seen(
    server_ns: &str,
    listen: std::net::SocketAddrV4,
    client_ns: &str,
    connect_to: std::net::SocketAddrV4,
) -> std::net::Ipv4Addr {
    use std::io::{BufRead, BufReader};
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let path = format!("/run/netns/{server_ns}");
    let server = std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let listener = std::net::TcpListener::bind(listen).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).expect("ready");
        let deadline = Instant::now() + Duration::from_secs(15);
        let (mut stream, peer) = loop {
            match listener.accept() {
                Ok(conn) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no connection to {listen}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).expect("blocking");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut line = String::new();
        BufReader::new(stream.try_clone().expect("clone"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line, "hello\n");
        stream.write_all(b"back\n").expect("reply");
        peer
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server ready");
    let reply = in_netns(client_ns, move || {
        let mut stream =
            std::net::TcpStream::connect_timeout(&connect_to.into(), Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connect {connect_to}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(b"hello\n").expect("send");
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).expect("reply");
        line
    });
    assert_eq!(reply, "back\n", "the reply came back");
    match server.join().expect("server thread").ip() {
        std::net::IpAddr::V4(ip) => ip,
        other => panic!("IPv6 peer {other}"),
    }
}

/// Link names in a namespace.
pub fn links(lab: &Lab, ns: &str) -> Vec<String> {
    let out = lab.run(ns, &["ip", "-o", "link", "show"]);
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

/// ping's average RTT in microseconds (`count` probes at `interval` s).
pub fn ping_rtt_us(lab: &Lab, ns: &str, target: Ipv4Addr, count: u32, interval: &str) -> f64 {
    let out = lab.run(
        ns,
        &[
            "ping",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-q",
            &target.to_string(),
        ],
    );
    let stats = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .unwrap_or_else(|| panic!("no rtt line in {out}"));
    let avg: f64 = stats
        .split('=')
        .nth(1)
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {stats}"));
    avg * 1000.0
}

/// iperf3 TCP from `client_ns` to a server started in `server_ns` on `server_ip`;
/// returns the received Gbit/s.
pub fn iperf3_gbps(
    lab: &mut Lab,
    server_ns: &str,
    server_ip: Ipv4Addr,
    client_ns: &str,
    seconds: u32,
    streams: u32,
) -> f64 {
    let ip = server_ip.to_string();
    let log = format!("iperf3-{server_ns}-{streams}.log");
    let server = lab.iperf3_server(server_ns, &ip, &log);
    let out = lab.exec(
        client_ns,
        &[
            "iperf3",
            "-c",
            &ip,
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ],
    );
    assert!(
        out.status.success(),
        "iperf3 {client_ns} -> {ip}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    lab.wait_child(server, Duration::from_secs(10));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    let bytes = report["end"]["sum_received"]["bytes"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(bytes > 0.0, "iperf3 moved nothing: {report}");
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

/// Subnets 10.244.N.0/24, N counting up from `from`, that are none of `taken`:
/// for leases a test writes after its weftds picked theirs at random.
pub fn spare_subnets(from: u8, taken: &[ipnet::Ipv4Net]) -> std::vec::IntoIter<ipnet::Ipv4Net> {
    (from..=u8::MAX)
        .map(|n| ipnet::Ipv4Net::new(Ipv4Addr::new(10, 244, n, 0), 24).expect("a /24"))
        .filter(|n| !taken.contains(n))
        .collect::<Vec<_>>()
        .into_iter()
}

// ---------------------------------------------------------------------------
// Dual stack: IPv6 on the underlay and the overlay (netns-tests/dualstack.rs)
// ---------------------------------------------------------------------------

/// A net-conf with both families: `10.244.0.0/16` and `fd10:244::/56` (a /24
/// and a /64 per node), VNI 1 and UDP port `port`.
pub fn dual_net_conf(port: u16) -> String {
    format!(
        r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{{"Type":"vxlan","VNI":1,"Port":{port}}}}}"#
    )
}

/// flannel's lease key of a dual-stack lease (`10.244.5.0-24&fd10:244:0:5::-64`):
/// the directory store's file name and the last part of the etcd key.
pub fn dual_lease_key(v4: ipnet::Ipv4Net, v6: ipnet::Ipv6Net) -> String {
    format!(
        "{}-{}&{}-{}",
        v4.network(),
        v4.prefix_len(),
        v6.network(),
        v6.prefix_len()
    )
}

/// flannel's lease JSON of a dual-stack vxlan node, byte for byte.
pub fn dual_lease_json(
    public_ip: Ipv4Addr,
    public_ipv6: Ipv6Addr,
    vni: u32,
    mac: &str,
    mac6: &str,
) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":"{public_ipv6}","BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":{vni},"VtepMAC":"{mac6}"}}}}"#
    )
}

impl Lab {
    /// The node's underlay IPv6 address; panics in an IPv4-only lab.
    pub fn ip6(&self, node: usize) -> Ipv6Addr {
        self.nodes[node]
            .ip6
            .unwrap_or_else(|| panic!("node {node} has no IPv6 address: use Lab::new_dual"))
    }

    /// The node's subnet file as `KEY → value` (empty if there is none).
    pub fn subnet_env(&self, node: usize) -> BTreeMap<String, String> {
        std::fs::read_to_string(self.subnet_file(node))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The node's IPv6 subnet, from `FLANNEL_IPV6_SUBNET` of its subnet file
    /// (`fd10:244:0:5::1/64` → `fd10:244:0:5::/64`); panics, showing the
    /// file, when it has none.
    pub fn subnet_v6(&self, node: usize) -> ipnet::Ipv6Net {
        let env = self.subnet_env(node);
        let value = env.get("FLANNEL_IPV6_SUBNET").unwrap_or_else(|| {
            panic!(
                "node {node}'s subnet file has no FLANNEL_IPV6_SUBNET:\n{}",
                std::fs::read_to_string(self.subnet_file(node)).unwrap_or_default()
            )
        });
        let net: ipnet::Ipv6Net = value
            .parse()
            .unwrap_or_else(|e| panic!("node {node}: FLANNEL_IPV6_SUBNET={value}: {e}"));
        net.trunc()
    }

    /// Waits until node's weftd is ready; returns its (IPv4, IPv6) subnets.
    pub fn wait_ready_dual(&mut self, node: usize) -> (ipnet::Ipv4Net, ipnet::Ipv6Net) {
        let v4 = self.wait_ready(node);
        (v4, self.subnet_v6(node))
    }

    /// Starts weftd on `node` with `opts` and waits until it is ready; returns its (IPv4, IPv6) subnets.
    pub fn start_weftd_dual(
        &mut self,
        node: usize,
        opts: WeftdOpts,
    ) -> (ipnet::Ipv4Net, ipnet::Ipv6Net) {
        self.start_weftd_with(node, opts);
        self.wait_ready_dual(node)
    }

    /// Peer routes on node's IPv6 VTEP device `flannel-v6.1`, as `ip -6 route` prints them.
    pub fn vtep6_routes(&self, node: usize) -> Vec<String> {
        let out = self.exec(
            self.ns(node),
            &["ip", "-6", "route", "show", "dev", "flannel-v6.1"],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .collect()
    }

    /// Pings IPv6 `target` from namespace `ns`: `count` packets, true if all answered.
    pub fn ping6(&self, ns: &str, target: Ipv6Addr, count: u32) -> bool {
        let c = count.to_string();
        let target = target.to_string();
        self.exec(
            ns,
            &[
                "ping", "-6", "-c", &c, "-i", "0.2", "-W", "2", "-q", &target,
            ],
        )
        .status
        .success()
    }

    /// Pings IPv6 `target` until one reply comes back, or panics after `timeout`.
    pub fn wait_ping6(&self, ns: &str, target: Ipv6Addr, timeout: Duration) {
        let target_s = target.to_string();
        wait_for(&format!("ping -6 {target} from {ns}"), timeout, || {
            self.exec(ns, &["ping", "-6", "-c", "1", "-W", "1", "-q", &target_s])
                .status
                .success()
                .then_some(())
        })
    }
}

/// `(MAC, MTU, flags)` of link `dev` in `ns` from `ip -o link show`; none if
/// there is no such link.
pub fn link_info(lab: &Lab, ns: &str, dev: &str) -> Option<(String, u32, String)> {
    let out = lab.exec(ns, &["ip", "-o", "link", "show", "dev", dev]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .map(|w| (*w).to_owned())
    };
    let mac = after("link/ether").unwrap_or_default();
    let mtu = after("mtu").and_then(|m| m.parse().ok()).unwrap_or(0);
    let flags = words.get(2).map(|w| (*w).to_owned()).unwrap_or_default();
    Some((mac, mtu, flags))
}

/// The first IPv6 address of an ADD result (any result version).
pub fn result_ipv6(result: &serde_json::Value) -> (Ipv6Addr, ipnet::Ipv6Net) {
    let address = result["ips"]
        .as_array()
        .and_then(|ips| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str())
                .find(|a| a.contains(':'))
        })
        .unwrap_or_else(|| panic!("no IPv6 address in {result}"));
    let net: ipnet::Ipv6Net = address.parse().expect("address/prefix");
    (net.addr(), net)
}

/// iperf3 TCP for `seconds` s from `client_ns` to a one-shot server started in
/// `server_ns` on `server_ip` (either family); returns (bytes received, Gbit/s).
pub fn iperf3_bytes_gbps(
    lab: &mut Lab,
    server_ns: &str,
    server_ip: IpAddr,
    client_ns: &str,
    seconds: u32,
) -> (f64, f64) {
    let ip = server_ip.to_string();
    let log = format!("iperf3-{server_ns}-{}.log", lab.children.len());
    let server = lab.iperf3_server(server_ns, &ip, &log);
    let out = lab.exec(
        client_ns,
        &["iperf3", "-c", &ip, "-t", &seconds.to_string(), "-J"],
    );
    assert!(
        out.status.success(),
        "iperf3 {client_ns} -> {ip}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    lab.wait_child(server, Duration::from_secs(10));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    let sum = &report["end"]["sum_received"];
    (
        sum["bytes"].as_f64().unwrap_or(0.0),
        sum["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
    )
}

/// The IPv6 half of a node programmed exactly as flannel's vxlan backend
/// programs the kernel (flannel-compat.md §5), parallel to [`KernelVtep`]: a
/// kernel `vxlan` device `flannel-v6.<VNI>` with `nolearning`, the local
/// underlay IPv6 address, the configured port, MTU = underlay − 70 (what
/// the kernel clamps flannel's − 50 to on an IPv6 VTEP), address `S6::/128`;
/// per remote lease a permanent neighbour `S6:: → MAC`, a `self permanent`
/// FDB entry `MAC → public IPv6`, and `S6 via S6:: onlink`.
#[derive(Debug, Clone)]
pub struct KernelVtep6 {
    pub vni: u32,
    pub port: u16,
    pub subnet: ipnet::Ipv6Net,
    pub mac: String,
}

impl KernelVtep6 {
    pub fn device(&self) -> String {
        format!("flannel-v6.{}", self.vni)
    }

    /// Creates and configures the device in `ns`, whose underlay IPv6 address is `local`.
    pub fn create(&self, lab: &Lab, ns: &str, local: Ipv6Addr) {
        let dev = self.device();
        let vni = self.vni.to_string();
        let port = self.port.to_string();
        let local = local.to_string();
        lab.run(
            ns,
            &[
                "ip",
                "link",
                "add",
                &dev,
                "type",
                "vxlan",
                "id",
                &vni,
                "local",
                &local,
                "dev",
                "eth0",
                "dstport",
                &port,
                "nolearning",
                "ttl",
                "auto",
            ],
        );
        lab.run(
            ns,
            &[
                "ip", "link", "set", &dev, "address", &self.mac, "mtu", "1430",
            ],
        );
        // flannel sets accept_ra = 0 on its devices.
        let _ = lab.exec(
            ns,
            &[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv6.conf.{dev}.accept_ra=0"),
            ],
        );
        let addr = format!("{}/128", self.subnet.network());
        lab.run(
            ns,
            &["ip", "-6", "addr", "add", &addr, "dev", &dev, "nodad"],
        );
        lab.run(ns, &["ip", "link", "set", &dev, "up"]);
    }

    /// Programs a remote lease: neighbour, FDB entry, then the route (flannel's order).
    pub fn add_peer(
        &self,
        lab: &Lab,
        ns: &str,
        subnet: ipnet::Ipv6Net,
        public_ipv6: Ipv6Addr,
        mac: &str,
    ) {
        let dev = self.device();
        let gw = subnet.network().to_string();
        lab.run(
            ns,
            &[
                "ip",
                "-6",
                "neigh",
                "replace",
                &gw,
                "lladdr",
                mac,
                "dev",
                &dev,
                "nud",
                "permanent",
            ],
        );
        lab.run(
            ns,
            &[
                "bridge",
                "fdb",
                "replace",
                mac,
                "dev",
                &dev,
                "dst",
                &public_ipv6.to_string(),
                "self",
                "permanent",
            ],
        );
        lab.run(
            ns,
            &[
                "ip",
                "-6",
                "route",
                "replace",
                &subnet.to_string(),
                "via",
                &gw,
                "dev",
                &dev,
                "onlink",
            ],
        );
    }
}

// ---------------------------------------------------------------------------
// IPv6-only networks: `EnableIPv4: false` (netns-tests/ipv6only.rs)
// ---------------------------------------------------------------------------

/// flannel's lease key of an IPv6-only lease (`0.0.0.0-0&fd10:244:0:5::-64`):
/// the zero IPv4 subnet, then the IPv6 one. The directory store's file name
/// and the last part of the etcd key.
pub fn v6only_lease_key(v6: ipnet::Ipv6Net) -> String {
    format!("0.0.0.0-0&{}-{}", v6.network(), v6.prefix_len())
}

/// flannel's lease JSON of an IPv6-only vxlan node, byte for byte:
/// `PublicIP` 0.0.0.0, no `BackendData`, the VTEP in `BackendV6Data`.
pub fn v6only_lease_json(public_ipv6: Ipv6Addr, vni: u32, mac6: &str) -> String {
    format!(
        r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{public_ipv6}","BackendType":"vxlan","BackendV6Data":{{"VNI":{vni},"VtepMAC":"{mac6}"}}}}"#
    )
}

impl Lab {
    /// Waits until node's weftd of an IPv6-only network reports ready (it
    /// has no IPv4 lease for [`Lab::wait_ready`] to read) and returns its
    /// IPv6 subnet, from `FLANNEL_IPV6_SUBNET` of its subnet file. Panics
    /// with weftd's log if it exits first or is not ready after 30 s.
    pub fn wait_ready_v6only(&mut self, node: usize) -> ipnet::Ipv6Net {
        self.wait_ready_status(node);
        self.subnet_v6(node)
    }

    /// Starts weftd on `node` with `opts` in an IPv6-only network and waits
    /// until it is ready; returns its IPv6 subnet.
    pub fn start_weftd_v6only(&mut self, node: usize, opts: WeftdOpts) -> ipnet::Ipv6Net {
        self.start_weftd_with(node, opts);
        self.wait_ready_v6only(node)
    }

    /// The lease files in the embedded store (its lock and temporary files,
    /// whose names start with a dot, left out), sorted.
    pub fn lease_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.store_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// A process's resident set (kB) and open descriptors.
pub fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

/// A process's open descriptors once they are at most `bound`, or after
/// `limit` what they are then. Descriptors a moment's work holds (a status
/// connection being answered, a directory being read) go back down; a leak
/// stays up.
pub fn settled_fds(pid: u32, bound: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let fds = rss_and_fds(pid).1;
        if fds <= bound || Instant::now() > deadline {
            return fds;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
