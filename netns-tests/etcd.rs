//! weft on flannel's etcd: a real etcd server in the lab's underlay namespace,
//! real weftd processes, and nodes programmed exactly as flannel's kernel
//! VXLAN backend programs the kernel.
//!
//! The first section is the etcd helper ([`EtcdServer`]); the tests follow.

use crate::harness::*;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

// ======================================================================
// etcd server helper
// ======================================================================

/// Where node namespaces reach etcd: the underlay bridge address.
pub const ETCD_ENDPOINT: &str = "http://192.168.100.254:2379";
/// Where the test's own etcdctl talks to it (loopback of the underlay namespace).
const LOCAL_ENDPOINT: &str = "http://127.0.0.1:2379";
pub const PREFIX: &str = "/coreos.com/network";
pub const CONFIG_KEY: &str = "/coreos.com/network/config";

/// flannel's key for a subnet.
pub fn lease_key(subnet: Ipv4Net) -> String {
    format!("{PREFIX}/subnets/{}-{}", subnet.addr(), subnet.prefix_len())
}

/// One etcd server in the lab's underlay namespace, data in the lab's temp
/// dir. It can be stopped and started again on the same data; it is killed
/// when dropped.
#[derive(Debug)]
pub struct EtcdServer {
    ns: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    tls: Option<EtcdTls>,
    /// `user:password` etcdctl authenticates with, once auth is enabled.
    user: Option<String>,
}

impl EtcdServer {
    /// Starts etcd (plain http) in `lab`'s underlay and waits until it answers.
    pub fn start(lab: &Lab) -> EtcdServer {
        EtcdServer::start_with(lab, None)
    }

    /// Starts etcd, serving https and requiring client certificates when `tls` is given.
    pub fn start_with(lab: &Lab, tls: Option<EtcdTls>) -> EtcdServer {
        let mut server = EtcdServer {
            ns: lab.underlay.clone(),
            data_dir: lab.dir.path().join("etcd-data"),
            log: lab.dir.path().join("etcd.log"),
            child: None,
            tls,
            user: None,
        };
        server.launch();
        server
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The endpoint node namespaces use.
    pub fn endpoint(&self) -> String {
        format!("{}://192.168.100.254:2379", self.scheme())
    }

    fn local_endpoint(&self) -> String {
        format!("{}://127.0.0.1:2379", self.scheme())
    }

    /// Makes etcdctl authenticate as `user:password` from now on.
    pub fn set_user(&mut self, user_password: &str) {
        self.user = Some(user_password.to_owned());
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("etcd log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "etcd"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", "weft-lab"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--listen-client-urls",
                &format!("{},{}", self.endpoint(), self.local_endpoint()),
                "--advertise-client-urls",
                &self.endpoint(),
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "weft-lab=http://127.0.0.1:2380",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.ctl(&["endpoint", "health"]).status.success() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("etcd exited ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy after 20 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops etcd (SIGTERM, then SIGKILL after 5 s); the data stays.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts etcd again on the same data.
    pub fn restart(&mut self) {
        self.launch();
    }

    /// Runs `etcdctl` (API v3) against this server.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "etcdctl"]).args([
            "--endpoints",
            &self.local_endpoint(),
            "--command-timeout=5s",
        ]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        if let Some(user) = &self.user {
            cmd.args(["--user", user]);
        }
        cmd.args(args).env("ETCDCTL_API", "3");
        output_with_timeout(&mut cmd, Duration::from_secs(10))
    }

    /// Runs `etcdctl` and returns its stdout; panics if it fails.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn put(&self, key: &str, value: &str) {
        self.ctl_ok(&["put", "--", key, value]);
    }

    /// Puts `key` attached to a new etcd lease of `ttl` seconds (as flanneld writes its lease).
    pub fn put_leased(&self, key: &str, value: &str, ttl: u64) -> i64 {
        let out = self.ctl_ok(&["lease", "grant", &ttl.to_string()]);
        // "lease 694d7ba3c6e06e0b granted with TTL(86400s)"
        let hex = out.split_whitespace().nth(1).expect("lease id");
        self.ctl_ok(&["put", &format!("--lease={hex}"), "--", key, value]);
        i64::from_str_radix(hex, 16).expect("hex lease id")
    }

    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl_ok(&["get", "--print-value-only", "--", key]);
        let value = out.strip_suffix('\n').unwrap_or(&out);
        (!value.is_empty()).then(|| value.to_owned())
    }

    pub fn del(&self, key: &str) {
        self.ctl_ok(&["del", "--", key]);
    }

    /// The keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctl_ok(&["get", "--prefix", "--keys-only", "--", prefix])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-w", "json"];
        all.extend(args);
        serde_json::from_str(&self.ctl_ok(&all)).expect("etcdctl JSON")
    }

    /// The etcd lease `key` is attached to (0: none).
    pub fn lease_of(&self, key: &str) -> i64 {
        let v = self.json(&["get", "--", key]);
        v["kvs"][0]["lease"].as_i64().unwrap_or(0)
    }

    /// (remaining TTL, granted TTL) of an etcd lease, in seconds.
    pub fn lease_ttl(&self, id: i64) -> (i64, i64) {
        let v = self.json(&["lease", "timetolive", &format!("{id:x}")]);
        (
            v["ttl"].as_i64().expect("ttl"),
            v["granted-ttl"].as_i64().expect("granted-ttl"),
        )
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        self.json(&["get", "--", "/weft-test/none"])["header"]["revision"]
            .as_i64()
            .expect("revision")
    }

    /// Compacts the history up to `revision`.
    pub fn compact(&self, revision: i64) {
        self.ctl_ok(&["compact", &revision.to_string(), "--physical"]);
    }
}

/// A throwaway PKI for an etcd with TLS: a CA, a server certificate for the
/// underlay and loopback addresses, and a client certificate.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    /// Generates the files in `dir` with openssl (ECDSA P-256, valid 2 days).
    pub fn generate(dir: &std::path::Path) -> EtcdTls {
        std::fs::create_dir_all(dir).expect("pki dir");
        let openssl = |args: &[&str]| {
            let out = output_with_timeout(
                Command::new("openssl").args(args).current_dir(dir),
                Duration::from_secs(20),
            );
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=weft-test-ca",
        ]);
        openssl(&ca);
        for (name, serial, ext) in [
            (
                "server",
                "1",
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:192.168.100.254,IP:127.0.0.1\n",
            ),
            (
                "client",
                "2",
                "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
            ),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext file");
            let (key, csr, pem, extfile, subj) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
                format!("/CN=weft-test-{name}"),
            );
            let mut req = vec!["req"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(&req);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &extfile,
            ]);
        }
        EtcdTls {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ======================================================================
// test helpers
// ======================================================================

/// Options for a weftd on etcd: the lab's flags, no embedded store, `extra`.
pub fn etcd_opts(extra: &[&str]) -> WeftdOpts {
    let mut flags = vec!["--etcd-endpoints".to_owned(), ETCD_ENDPOINT.to_owned()];
    flags.extend(extra.iter().map(|s| (*s).to_owned()));
    WeftdOpts {
        extra: flags,
        no_local_store: true,
        ..WeftdOpts::default()
    }
}

pub fn start_etcd_weftd(lab: &mut Lab, node: usize) -> Ipv4Net {
    lab.start_weftd_with(node, etcd_opts(&[]));
    lab.wait_ready(node)
}

/// flannel's lease JSON for a vxlan node.
pub fn flannel_json(public_ip: Ipv4Addr, vni: u32, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}}}"#
    )
}

pub fn own_mac(lab: &Lab, node: usize) -> String {
    lab.status(node)["lease"]["vtep_mac"]
        .as_str()
        .expect("vtep_mac")
        .to_owned()
}

/// The peer entry for `subnet` in node's status, if any.
fn peer(lab: &Lab, node: usize, subnet: Ipv4Net) -> Option<serde_json::Value> {
    let status = lab.status(node);
    let p = &status["peers"][subnet.to_string()];
    (!p.is_null()).then(|| p.clone())
}

pub fn has_route(lab: &Lab, node: usize, subnet: Ipv4Net) -> bool {
    let prefix = format!("{subnet} via {}", subnet.network());
    lab.vtep_routes(node).iter().any(|r| r.starts_with(&prefix))
}

pub fn store_stat(lab: &Lab, node: usize, name: &str) -> serde_json::Value {
    lab.status(node)["store_stats"][name].clone()
}

/// Pings `count` times every 0.2 s; returns (transmitted, received).
fn ping_counts(lab: &Lab, ns: &str, target: Ipv4Addr, count: u32) -> (u32, u32) {
    let out = lab.exec(
        ns,
        &[
            "ping",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            "-q",
            &target.to_string(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // "10 packets transmitted, 10 received, 0% packet loss, time 1803ms"
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("ping output: {text}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// Polls until `f` holds; returns how long it took after `since`, or panics after `timeout`.
fn time_until(
    what: &str,
    since: Instant,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> Duration {
    wait_for(what, timeout, || f().then_some(()));
    since.elapsed()
}

/// iperf3 from `ns` to `server` (already listening); returns the received bytes.
fn iperf3(lab: &Lab, ns: &str, server: Ipv4Addr, seconds: u32) -> f64 {
    let out = lab.exec(
        ns,
        &[
            "iperf3",
            "-c",
            &server.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ],
    );
    assert!(
        out.status.success(),
        "iperf3 to {server}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    report["end"]["sum_received"]["bytes"]
        .as_f64()
        .expect("received bytes")
}

/// Cuts `ns` off etcd: new connections are refused and the current ones killed.
pub fn cut_from_etcd(lab: &Lab, ns: &str) {
    lab.run(ns, &["nft", "add", "table", "inet", "weft_etcd_cut"]);
    lab.run(
        ns,
        &[
            "nft",
            "add",
            "chain",
            "inet",
            "weft_etcd_cut",
            "out",
            "{ type filter hook output priority 0 ; }",
        ],
    );
    lab.run(
        ns,
        &[
            "nft",
            "add",
            "rule",
            "inet",
            "weft_etcd_cut",
            "out",
            "ip",
            "daddr",
            "192.168.100.254",
            "tcp",
            "dport",
            "2379",
            "reject",
            "with",
            "tcp",
            "reset",
        ],
    );
    lab.run(
        ns,
        &["ss", "-K", "dst", "192.168.100.254", "dport", "=", "2379"],
    );
}

pub fn heal_etcd_path(lab: &Lab, ns: &str) {
    lab.run(ns, &["nft", "delete", "table", "inet", "weft_etcd_cut"]);
}

pub fn wait_disconnected(lab: &Lab, node: usize) {
    wait_for(
        "weftd to notice it lost etcd",
        Duration::from_secs(10),
        || (store_stat(lab, node, "connected") == false).then_some(()),
    );
}

const KERNEL_SUBNET: &str = "10.244.200.0/24";

// ======================================================================
// tests
// ======================================================================

/// Two weft nodes acquire distinct leases whose keys and JSON are flannel's,
/// each attached to a 24 h etcd lease; a missing config is reported with
/// flannel's message and retried every second; a restarted node reuses its
/// lease (found by public IP) with a fresh etcd lease.
#[test]
fn etcd_leases_are_flannels_keys_and_json_with_a_24h_ttl() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    let etcd = EtcdServer::start(&lab);
    lab.start_weftd_with(0, etcd_opts(&[]));
    wait_for(
        "two config retries in the log",
        Duration::from_secs(10),
        || {
            let log = lab.weftd_log(0);
            (log.matches("flannel config not found in etcd store. Did you create your config using etcdv3 API?")
                .count()
                >= 2)
                .then_some(())
        },
    );
    assert!(
        lab.weftd_log(0).contains(CONFIG_KEY),
        "the message names the key"
    );
    etcd.put(CONFIG_KEY, DEFAULT_NET_CONF);
    let s0 = lab.wait_ready(0);
    let s1 = start_etcd_weftd(&mut lab, 1);
    assert_ne!(s0, s1);

    let mut keys = etcd.keys(&format!("{PREFIX}/subnets/"));
    keys.sort();
    let mut want = vec![lease_key(s0), lease_key(s1)];
    want.sort();
    assert_eq!(keys, want);
    for (node, subnet) in [(0, s0), (1, s1)] {
        let key = lease_key(subnet);
        assert_eq!(
            etcd.get(&key).as_deref(),
            Some(flannel_json(lab.nodes[node].ip, 1, &own_mac(&lab, node)).as_str()),
            "{key} holds flannel's JSON byte for byte"
        );
        let id = etcd.lease_of(&key);
        assert_ne!(id, 0, "{key} has an etcd lease");
        let (ttl, granted) = etcd.lease_ttl(id);
        assert_eq!(granted, 86400);
        assert!((86400 - 120..=86400).contains(&ttl), "ttl {ttl}");
    }
    let status = lab.status(0);
    assert_eq!(status["store"]["kind"], "etcd");
    assert!(
        status["store"]["endpoint"]
            .as_str()
            .unwrap()
            .contains(ETCD_ENDPOINT)
    );
    assert_eq!(status["store_stats"]["connected"], true);
    lab.wait_ping(lab.ns(0), s1.network(), Duration::from_secs(5));
    lab.wait_ping(lab.ns(1), s0.network(), Duration::from_secs(5));

    // A restart finds this public IP's lease and re-puts it with a fresh etcd lease.
    let before = etcd.lease_of(&lease_key(s0));
    let mac = own_mac(&lab, 0);
    assert_eq!(
        lab.stop_weftd(0, nix::sys::signal::Signal::SIGTERM),
        Some(0)
    );
    std::fs::remove_file(lab.subnet_file(0)).unwrap();
    lab.start_weftd_with(0, etcd_opts(&[]));
    assert_eq!(
        lab.wait_ready(0),
        s0,
        "the lease of this public IP is reused"
    );
    assert_eq!(own_mac(&lab, 0), mac, "and its VtepMAC");
    let after = etcd.lease_of(&lease_key(s0));
    assert_ne!(after, before, "a fresh etcd lease is attached");
    assert_eq!(etcd.lease_ttl(after).1, 86400);
    assert!(lab.ping(lab.ns(1), s0.network(), 2));
}

/// Renewal puts the lease again with a fresh etcd lease. The lease is made
/// short with the hidden `--etcd-lease-ttl` (the test hook, like the embedded
/// store's `--local-lease-ttl`) so that renewal — due at TTL − margin — comes
/// within seconds; the code path is the one a 24 h lease takes.
#[test]
fn etcd_renewal_attaches_a_fresh_ttl() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    let etcd = EtcdServer::start(&lab);
    etcd.put(CONFIG_KEY, DEFAULT_NET_CONF);
    lab.start_weftd_with(
        0,
        etcd_opts(&["--etcd-lease-ttl", "64", "--subnet-lease-renew-margin", "1"]),
    );
    let subnet = lab.wait_ready(0);
    let key = lease_key(subnet);
    let value = etcd.get(&key).expect("lease");
    let first = etcd.lease_of(&key);
    assert_eq!(etcd.lease_ttl(first).1, 64);
    assert_eq!(store_stat(&lab, 0, "renewals"), 0);
    let renewed = wait_for(
        "renewal (due 4 s after acquisition)",
        Duration::from_secs(15),
        || {
            let id = etcd.lease_of(&key);
            (id != first && id != 0).then_some(id)
        },
    );
    let (ttl, granted) = etcd.lease_ttl(renewed);
    assert_eq!(granted, 64);
    assert!(ttl >= 60, "fresh TTL, got {ttl}");
    assert_eq!(etcd.get(&key), Some(value), "same value");
    wait_for("renewal counted", Duration::from_secs(2), || {
        (store_stat(&lab, 0, "renewals").as_u64() >= Some(1)).then_some(())
    });
    assert!(lab.weftd_log(0).contains("Lease renewed, new expiration"));
    let expires = lab.status(0)["lease"]["expires"].as_u64().unwrap();
    let now = lab.status(0)["now"].as_u64().unwrap();
    assert!(
        (now + 55..=now + 64).contains(&expires),
        "status shows the new expiry"
    );
}

/// A node programmed as flannel's kernel vxlan backend, whose lease the test
/// writes into etcd in flannel's format, and a weft node, whose lease the test
/// reads from etcd as flannel would: ping and iperf3 both ways.
fn interop_with_a_flannel_kernel_node(net_conf: &str, port: u16, vni: u32) {
    let mut lab = Lab::new(2);
    let etcd = EtcdServer::start(&lab);
    etcd.put(CONFIG_KEY, net_conf);
    let kernel = KernelVtep {
        vni,
        port,
        subnet: KERNEL_SUBNET.parse().expect("subnet"),
        mac: "0e:fa:00:00:00:01".into(),
    };
    let kernel_ip = lab.nodes[1].ip;
    etcd.put_leased(
        &lease_key(kernel.subnet),
        &kernel.lease_json(kernel_ip),
        86400,
    );
    let weft_subnet = start_etcd_weftd(&mut lab, 0);
    let status = lab.status(0);
    assert_eq!(status["lease"]["port"], port);
    assert_eq!(status["lease"]["vni"], vni);
    assert_eq!(status["device"]["name"], format!("flannel.{vni}"));

    // What flannel reads from etcd for the weft node.
    let value = etcd.get(&lease_key(weft_subnet)).expect("weft's lease");
    let lease: serde_json::Value = serde_json::from_str(&value).expect("lease JSON");
    assert_eq!(lease["BackendType"], "vxlan");
    assert_eq!(lease["PublicIP"], lab.nodes[0].ip.to_string());
    assert_eq!(lease["BackendData"]["VNI"], vni);
    let weft_mac = lease["BackendData"]["VtepMAC"]
        .as_str()
        .expect("VtepMAC")
        .to_owned();

    let ns0 = lab.ns(0).to_owned();
    let ns1 = lab.ns(1).to_owned();
    kernel.create(&lab, &ns1, kernel_ip);
    kernel.add_peer(&lab, &ns1, weft_subnet, lab.nodes[0].ip, &weft_mac);
    lab.wait_ping(&ns0, kernel.subnet.network(), Duration::from_secs(5));
    assert_eq!(
        ping_counts(&lab, &ns0, kernel.subnet.network(), 5),
        (5, 5),
        "weft -> kernel"
    );
    assert_eq!(
        ping_counts(&lab, &ns1, weft_subnet.network(), 5),
        (5, 5),
        "kernel -> weft"
    );

    lab.iperf3_server(
        &ns1,
        &kernel.subnet.network().to_string(),
        "iperf3-kernel.log",
    );
    assert!(
        iperf3(&lab, &ns0, kernel.subnet.network(), 1) > 0.0,
        "iperf3 weft -> kernel"
    );
    lab.iperf3_server(&ns0, &weft_subnet.network().to_string(), "iperf3-weft.log");
    assert!(
        iperf3(&lab, &ns1, weft_subnet.network(), 1) > 0.0,
        "iperf3 kernel -> weft"
    );
    let listening = lab.run(&ns0, &["ss", "-Hlun", "sport", "=", &format!(":{port}")]);
    assert!(!listening.trim().is_empty(), "weft listens on UDP {port}");
}

/// Defaults: `{"Network":…,"Backend":{"Type":"vxlan"}}` — VNI 1, and weft's
/// default port 4789 (a kernel flannel node without Port would use 8472:
/// see the README, such clusters set `"Port": 8472`).
#[test]
fn etcd_interop_with_a_flannel_kernel_node_defaults() {
    if skip_without_root() {
        return;
    }
    interop_with_a_flannel_kernel_node(DEFAULT_NET_CONF, 4789, 1);
}

/// flannel's kernel port 8472 and a VNI other than 1.
#[test]
fn etcd_interop_with_a_flannel_kernel_node_port_8472_vni_42() {
    if skip_without_root() {
        return;
    }
    interop_with_a_flannel_kernel_node(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":8472,"VNI":42}}"#,
        8472,
        42,
    );
}

/// A lease added, updated (new MAC, then new public IP) and deleted in etcd by
/// a third party is in routes and tables within a second, and traffic follows.
#[test]
fn etcd_third_party_changes_apply_within_a_second() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    let etcd = EtcdServer::start(&lab);
    etcd.put(CONFIG_KEY, DEFAULT_NET_CONF);
    let weft = start_etcd_weftd(&mut lab, 0);
    let weft_mac = own_mac(&lab, 0);
    let ns0 = lab.ns(0).to_owned();
    let ns1 = lab.ns(1).to_owned();
    let mut kernel = KernelVtep {
        vni: 1,
        port: 4789,
        subnet: spare_subnets(200, &[weft]).next().unwrap(),
        mac: "0e:fa:00:00:00:01".into(),
    };
    let key = lease_key(kernel.subnet);
    let second = Duration::from_secs(1);
    let ip1 = lab.nodes[1].ip;
    kernel.create(&lab, &ns1, ip1);
    kernel.add_peer(&lab, &ns1, weft, lab.nodes[0].ip, &weft_mac);

    // Added.
    etcd.put_leased(&key, &kernel.lease_json(ip1), 86400);
    let t = Instant::now();
    let took = time_until("lease added", t, Duration::from_secs(5), || {
        has_route(&lab, 0, kernel.subnet) && peer(&lab, 0, kernel.subnet).is_some()
    });
    println!(
        "added after {took:?} (from etcdctl returning to weftd status and ip route showing it)"
    );
    assert!(took < second, "added after {took:?}");
    assert!(lab.ping(&ns0, kernel.subnet.network(), 2));

    // Updated: the kernel node's VTEP got a new MAC.
    kernel.mac = "0e:fa:00:00:00:02".into();
    let dev = kernel.device();
    lab.run(&ns1, &["ip", "link", "set", &dev, "down"]);
    lab.run(&ns1, &["ip", "link", "set", &dev, "address", &kernel.mac]);
    lab.run(&ns1, &["ip", "link", "set", &dev, "up"]);
    kernel.add_peer(&lab, &ns1, weft, lab.nodes[0].ip, &weft_mac);
    etcd.put_leased(&key, &kernel.lease_json(ip1), 86400);
    let t = Instant::now();
    let took = time_until("new MAC in the tables", t, Duration::from_secs(5), || {
        peer(&lab, 0, kernel.subnet).is_some_and(|p| p["vtep_mac"] == kernel.mac.as_str())
    });
    println!(
        "MAC change after {took:?} (from etcdctl returning to weftd status and ip route showing it)"
    );
    assert!(took < second, "MAC change after {took:?}");
    lab.wait_ping(&ns0, kernel.subnet.network(), Duration::from_secs(3));
    assert_eq!(
        ping_counts(&lab, &ns1, weft.network(), 3),
        (3, 3),
        "kernel -> weft with the new MAC"
    );

    // Updated: the kernel node moved to a new public IP.
    let ip2 = Ipv4Addr::new(192, 168, 100, 50);
    lab.run(
        &ns1,
        &["ip", "addr", "add", "192.168.100.50/24", "dev", "eth0"],
    );
    lab.run(&ns1, &["ip", "link", "del", &dev]);
    kernel.create(&lab, &ns1, ip2);
    kernel.add_peer(&lab, &ns1, weft, lab.nodes[0].ip, &weft_mac);
    etcd.put_leased(&key, &kernel.lease_json(ip2), 86400);
    let t = Instant::now();
    let took = time_until(
        "new public IP in the tables",
        t,
        Duration::from_secs(5),
        || peer(&lab, 0, kernel.subnet).is_some_and(|p| p["public_ip"] == ip2.to_string()),
    );
    println!(
        "public IP change after {took:?} (from etcdctl returning to weftd status and ip route showing it)"
    );
    assert!(took < second, "public IP change after {took:?}");
    lab.wait_ping(&ns0, kernel.subnet.network(), Duration::from_secs(3));
    assert_eq!(
        ping_counts(&lab, &ns1, weft.network(), 3),
        (3, 3),
        "kernel (from its new address) -> weft"
    );

    // Deleted.
    etcd.del(&key);
    let t = Instant::now();
    let took = time_until("lease removed", t, Duration::from_secs(5), || {
        !has_route(&lab, 0, kernel.subnet) && peer(&lab, 0, kernel.subnet).is_none()
    });
    println!(
        "removed after {took:?} (from etcdctl returning to weftd status and ip route showing it)"
    );
    assert!(took < second, "removed after {took:?}");
    assert!(!lab.ping(&ns0, kernel.subnet.network(), 1));
}

/// etcd stopped: established traffic keeps flowing on the last known leases.
/// etcd started again: a node that joined meanwhile gets its lease, and the
/// others pick it up by resuming their watch (no relist).
#[test]
fn etcd_outage_keeps_traffic_and_recovers() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(3);
    let mut etcd = EtcdServer::start(&lab);
    etcd.put(CONFIG_KEY, DEFAULT_NET_CONF);
    let s0 = start_etcd_weftd(&mut lab, 0);
    let s1 = start_etcd_weftd(&mut lab, 1);
    let ns0 = lab.ns(0).to_owned();
    let ns1 = lab.ns(1).to_owned();
    let ns2 = lab.ns(2).to_owned();
    lab.wait_ping(&ns0, s1.network(), Duration::from_secs(5));

    // A TCP stream that runs across the moment etcd goes away.
    lab.iperf3_server(&ns1, &s1.network().to_string(), "iperf3-server.log");
    let client = Command::new("ip")
        .args(["netns", "exec", &ns0, "iperf3", "-c"])
        .arg(s1.network().to_string())
        .args(["-t", "4", "-i", "1", "-J"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iperf3 client");
    std::thread::sleep(Duration::from_millis(1500));
    etcd.stop();
    let out = client.wait_with_output().expect("iperf3");
    assert!(
        out.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let intervals = report["intervals"].as_array().unwrap();
    assert!(intervals.len() >= 4);
    for (i, iv) in intervals.iter().enumerate() {
        assert!(
            iv["sum"]["bytes"].as_f64().unwrap() > 0.0,
            "interval {i} moved nothing"
        );
    }
    for node in [0, 1] {
        wait_disconnected(&lab, node);
        assert!(lab.status(node)["store_stats"]["errors"]["unavailable"].as_u64() >= Some(1));
    }
    assert_eq!(
        ping_counts(&lab, &ns0, s1.network(), 10),
        (10, 10),
        "no loss while etcd is down"
    );
    assert_eq!(ping_counts(&lab, &ns1, s0.network(), 5), (5, 5));

    // A node joining while etcd is down waits for it.
    lab.start_weftd_with(2, etcd_opts(&[]));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lab.status(2)["ready"], false);
    assert!(
        lab.weftd_log(2).contains("retrying in 1 s"),
        "{}",
        lab.weftd_log(2)
    );

    etcd.restart();
    let s2 = lab.wait_ready(2);
    for node in [0, 1] {
        wait_for(
            "the new lease on an old node",
            Duration::from_secs(10),
            || has_route(&lab, node, s2).then_some(()),
        );
        assert_eq!(store_stat(&lab, node, "connected"), true);
        assert_eq!(
            store_stat(&lab, node, "snapshots"),
            1,
            "watch resumed, no relist"
        );
    }
    lab.wait_ping(&ns0, s2.network(), Duration::from_secs(5));
    assert!(lab.ping(&ns2, s0.network(), 2));
    assert!(lab.ping(&ns1, s2.network(), 2));
}

/// A node cut off etcd catches up when it returns: first by resuming its
/// watch (a lease added meanwhile), then, when the history it needs was
/// compacted, by relisting — the lease deleted meanwhile is removed and the
/// one added meanwhile appears.
#[test]
fn etcd_compaction_relists_and_converges() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    let etcd = EtcdServer::start(&lab);
    etcd.put(CONFIG_KEY, DEFAULT_NET_CONF);
    let s0 = start_etcd_weftd(&mut lab, 0);
    let s1 = start_etcd_weftd(&mut lab, 1);
    let ns0 = lab.ns(0).to_owned();
    let mut spare = spare_subnets(201, &[s0, s1]);
    let (a, b) = (spare.next().unwrap(), spare.next().unwrap());
    let fake = |last: u8| {
        flannel_json(
            Ipv4Addr::new(192, 168, 100, last),
            1,
            &format!("0e:fb:00:00:00:{last:02x}"),
        )
    };
    assert_eq!(store_stat(&lab, 0, "snapshots"), 1);

    // Behind, history intact: the watch resumes from its revision.
    cut_from_etcd(&lab, &ns0);
    wait_disconnected(&lab, 0);
    etcd.put(&lease_key(a), &fake(201));
    wait_for("node 1 sees A", Duration::from_secs(2), || {
        has_route(&lab, 1, a).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!has_route(&lab, 0, a), "node 0 is really cut off");
    heal_etcd_path(&lab, &ns0);
    wait_for("node 0 catches up on A", Duration::from_secs(10), || {
        has_route(&lab, 0, a).then_some(())
    });
    assert_eq!(store_stat(&lab, 0, "snapshots"), 1, "resumed, not relisted");

    // Behind, history compacted: relist with reset semantics.
    cut_from_etcd(&lab, &ns0);
    wait_disconnected(&lab, 0);
    etcd.put(&lease_key(b), &fake(202));
    etcd.del(&lease_key(a));
    etcd.compact(etcd.revision());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        has_route(&lab, 0, a) && !has_route(&lab, 0, b),
        "node 0 is behind"
    );
    heal_etcd_path(&lab, &ns0);
    wait_for(
        "node 0 converges after compaction",
        Duration::from_secs(10),
        || (has_route(&lab, 0, b) && !has_route(&lab, 0, a)).then_some(()),
    );
    assert!(peer(&lab, 0, a).is_none() && peer(&lab, 0, b).is_some());
    assert_eq!(store_stat(&lab, 0, "snapshots"), 2, "one relist");
    assert!(
        lab.weftd_log(0)
            .contains("etcd watch fell behind compaction"),
        "{}",
        lab.weftd_log(0)
    );
    // Node 1 never fell behind and never relisted.
    assert_eq!(store_stat(&lab, 1, "snapshots"), 1);
    assert!(has_route(&lab, 1, b) && !has_route(&lab, 1, a));
    assert!(lab.ping(&ns0, s1.network(), 2));
    assert!(lab.ping(lab.ns(1), s0.network(), 2));
}

/// Bad records — invalid JSON, a key that is not a subnet, an unknown backend
/// type, a public IP that does not parse — found at startup or arriving later
/// are skipped with a log line naming the key and counted; good leases work.
#[test]
fn etcd_bad_records_are_skipped_and_counted() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    let etcd = EtcdServer::start(&lab);
    etcd.put(CONFIG_KEY, DEFAULT_NET_CONF);
    let good = |ip: &str| flannel_json(ip.parse().unwrap(), 1, "0e:fc:00:00:00:01");
    let not_a_subnet = format!("{PREFIX}/subnets/not-a-subnet");
    let invalid_json = lease_key("10.244.77.0/24".parse().unwrap());
    etcd.put(&not_a_subnet, &good("192.168.100.77"));
    etcd.put(&invalid_json, "{\"PublicIP\":");
    let s0 = start_etcd_weftd(&mut lab, 0);
    let s1 = start_etcd_weftd(&mut lab, 1);
    for node in [0, 1] {
        let bad = store_stat(&lab, node, "bad_records");
        assert_eq!(bad["bad_key"], 1, "{bad}");
        assert_eq!(bad["invalid_json"], 1, "{bad}");
    }
    // Arriving while running, at subnets neither node was given (a bad record
    // over a node's own key would be a different test).
    let mut spare = spare_subnets(78, &[s0, s1]);
    let later: [Ipv4Net; 4] = std::array::from_fn(|_| spare.next().unwrap());
    let unknown_backend = lease_key(later[0]);
    let bad_ip = lease_key(later[1]);
    let invalid_later = lease_key(later[2]);
    etcd.put(
        &unknown_backend,
        r#"{"PublicIP":"192.168.100.78","PublicIPv6":null,"BackendType":"bogus","BackendData":{}}"#,
    );
    etcd.put(
        &bad_ip,
        r#"{"PublicIP":"999.168.100.79","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:fc:00:00:00:79"}}"#,
    );
    etcd.put(&invalid_later, "not json at all");
    wait_for("every bad record counted", Duration::from_secs(3), || {
        let bad = store_stat(&lab, 0, "bad_records");
        (bad["foreign_backend"] == 1 && bad["bad_public_ip"] == 1 && bad["invalid_json"] == 2)
            .then_some(())
    });
    let log = lab.weftd_log(0);
    for key in [&not_a_subnet, &invalid_json, &bad_ip, &invalid_later] {
        assert!(
            log.lines()
                .any(|l| l.contains("skipping a bad lease record") && l.contains(key.as_str())),
            "no log line for {key}:\n{log}"
        );
    }
    assert!(
        log.lines().any(|l| l.contains("ignoring lease")
            && l.contains(&format!("{}-24", later[0].network()))
            && l.contains("foreign_backend")),
        "{log}"
    );
    for subnet in [
        "10.244.77.0/24".parse().unwrap(),
        later[0],
        later[1],
        later[2],
    ] {
        assert!(!has_route(&lab, 0, subnet), "{subnet}");
    }
    assert_eq!(lab.status(0)["ready"], true);
    lab.wait_ping(lab.ns(0), s1.network(), Duration::from_secs(5));
    assert!(lab.ping(lab.ns(1), s0.network(), 2));
    // A good lease written after the bad ones still arrives.
    let late = later[3];
    etcd.put(&lease_key(late), &good("192.168.100.81"));
    wait_for("good lease after bad ones", Duration::from_secs(2), || {
        has_route(&lab, 0, late).then_some(())
    });
}

/// This node's key deleted in etcd: weftd says so in flannel's words and exits non-zero.
#[test]
fn etcd_own_lease_deleted_exits_non_zero() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    let etcd = EtcdServer::start(&lab);
    etcd.put(CONFIG_KEY, DEFAULT_NET_CONF);
    let subnet = start_etcd_weftd(&mut lab, 0);
    etcd.del(&lease_key(subnet));
    let code = lab.wait_weftd_exit(0, Duration::from_secs(5));
    assert!(matches!(code, Some(c) if c != 0), "exit code {code:?}");
    let log = lab.weftd_log(0);
    assert!(
        log.contains("Lease has been revoked. Shutting down daemon."),
        "{log}"
    );
    assert!(
        log.contains(&lease_key(subnet)),
        "the message names the key:\n{log}"
    );
}

/// Three nodes claiming at once in a network of three subnets, all remembering
/// the same previous subnet: one gets it back, each gets a distinct subnet (a
/// lost race is retried), and a fourth node is told `out of subnets`. An
/// invalid config is refused with flannel's message and the key named.
#[test]
fn etcd_concurrent_claims_are_distinct_then_out_of_subnets() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(4);
    let etcd = EtcdServer::start(&lab);
    let tiny = r#"{"Network":"10.244.0.0/28","Backend":{"Type":"vxlan"}}"#;
    etcd.put(CONFIG_KEY, tiny);
    let previous: Ipv4Net = "10.244.0.8/30".parse().unwrap();
    for node in 0..3 {
        std::fs::write(
            lab.subnet_file(node),
            "FLANNEL_NETWORK=10.244.0.0/28\nFLANNEL_SUBNET=10.244.0.9/30\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
    }
    for node in 0..3 {
        lab.start_weftd_with(node, etcd_opts(&[]));
    }
    let mut subnets: Vec<Ipv4Net> = (0..3).map(|n| lab.wait_ready(n)).collect();
    subnets.sort();
    let want: Vec<Ipv4Net> = ["10.244.0.4/30", "10.244.0.8/30", "10.244.0.12/30"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(
        subnets, want,
        "distinct, and the previous subnet reused once"
    );
    let reused = (0..3)
        .filter(|n| {
            lab.weftd_log(*n)
                .contains("reusing the previous subnet from the subnet file")
        })
        .count();
    assert_eq!(reused, 1);
    assert!(subnets.contains(&previous));
    let races = (0..3)
        .map(|n| {
            lab.weftd_log(n)
                .matches("another node claimed the subnet first")
                .count()
        })
        .sum::<usize>();
    println!("lost claim races retried: {races}");
    let mut keys = etcd.keys(&format!("{PREFIX}/subnets/"));
    keys.sort();
    let mut want_keys: Vec<String> = want.iter().map(|s| lease_key(*s)).collect();
    want_keys.sort();
    assert_eq!(keys, want_keys);

    // An invalid config: flannel's message, the key named, a non-zero exit.
    etcd.put(
        CONFIG_KEY,
        r#"{"Network":"10.244.0.0/29","Backend":{"Type":"vxlan"}}"#,
    );
    lab.start_weftd_with(3, etcd_opts(&[]));
    assert!(matches!(lab.wait_weftd_exit(3, Duration::from_secs(10)), Some(c) if c != 0));
    let log = lab.weftd_log(3);
    assert!(
        log.contains("network is too small. Minimum useful network prefix is /28")
            && log.contains(CONFIG_KEY),
        "{log}"
    );
    // Full: out of subnets.
    etcd.put(CONFIG_KEY, tiny);
    lab.start_weftd_with(3, etcd_opts(&[]));
    assert!(matches!(lab.wait_weftd_exit(3, Duration::from_secs(10)), Some(c) if c != 0));
    assert!(
        lab.weftd_log(3)
            .contains("failed to acquire lease: out of subnets"),
        "{}",
        lab.weftd_log(3)
    );
}

/// etcd over TLS with client certificates: `--etcd-cafile`, `--etcd-certfile`,
/// `--etcd-keyfile`; half a client identity is refused up front.
#[test]
fn etcd_over_tls_with_client_certificates() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    let tls = EtcdTls::generate(&lab.dir.path().join("pki"));
    let etcd = EtcdServer::start_with(&lab, Some(tls.clone()));
    etcd.put(CONFIG_KEY, DEFAULT_NET_CONF);
    let path = |p: &PathBuf| p.display().to_string();
    let endpoint = etcd.endpoint();
    let opts = |extra: &[&str]| {
        let mut flags = vec!["--etcd-endpoints".to_owned(), endpoint.clone()];
        flags.extend(extra.iter().map(|s| (*s).to_owned()));
        WeftdOpts {
            extra: flags,
            no_local_store: true,
            ..WeftdOpts::default()
        }
    };
    let (ca, cert, key) = (path(&tls.ca), path(&tls.client_cert), path(&tls.client_key));
    lab.start_weftd_with(0, opts(&["--etcd-cafile", &ca, "--etcd-certfile", &cert]));
    let code = lab.wait_weftd_exit(0, Duration::from_secs(10));
    assert!(matches!(code, Some(c) if c != 0), "exit code {code:?}");
    assert!(
        lab.weftd_log(0)
            .contains("--etcd-certfile and --etcd-keyfile go together"),
        "{}",
        lab.weftd_log(0)
    );
    lab.start_weftd_with(
        0,
        opts(&[
            "--etcd-cafile",
            &ca,
            "--etcd-certfile",
            &cert,
            "--etcd-keyfile",
            &key,
        ]),
    );
    let subnet = lab.wait_ready(0);
    assert_eq!(
        etcd.get(&lease_key(subnet)),
        Some(flannel_json(lab.nodes[0].ip, 1, &own_mac(&lab, 0)))
    );
    assert_eq!(store_stat(&lab, 0, "connected"), true);
    assert!(!lab.weftd_log(0).contains("This is insecure"));
}

/// etcd with authentication: the password from `FLANNELD_ETCD_PASSWORD`; a
/// wrong one ends weftd with a message naming the flags to check.
#[test]
fn etcd_with_user_and_password() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    let mut etcd = EtcdServer::start(&lab);
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "flannel"],
        &[
            "role",
            "grant-permission",
            "flannel",
            "--prefix=true",
            "readwrite",
            "/coreos.com/network/",
        ],
        &["user", "add", "flannel:flannelpw"],
        &["user", "grant-role", "flannel", "flannel"],
        &["auth", "enable"],
    ] {
        etcd.ctl_ok(args);
    }
    etcd.set_user("root:rootpw");
    etcd.put(CONFIG_KEY, DEFAULT_NET_CONF);
    let opts = |password: &str| WeftdOpts {
        env: vec![("FLANNELD_ETCD_PASSWORD".to_owned(), password.to_owned())],
        ..etcd_opts(&["--etcd-username", "flannel"])
    };
    lab.start_weftd_with(0, opts("wr0ng-pa55"));
    let code = lab.wait_weftd_exit(0, Duration::from_secs(10));
    assert!(matches!(code, Some(c) if c != 0), "exit code {code:?}");
    let log = lab.weftd_log(0);
    assert!(
        log.contains("refused the credentials") && log.contains("--etcd-password"),
        "{log}"
    );
    assert!(
        !log.contains("wr0ng-pa55"),
        "the password is not logged:\n{log}"
    );
    lab.start_weftd_with(0, opts("flannelpw"));
    let subnet = lab.wait_ready(0);
    assert!(etcd.get(&lease_key(subnet)).is_some());
    assert!(
        !lab.weftd_log(0).contains("flannelpw"),
        "the password is not logged"
    );
}

/// A writer in the underlay namespace that puts keys (`Some(value)`) or
/// deletes them (`None`) with an in-process etcd client and reports when each
/// request was issued and when etcd confirmed it, so a latency measurement
/// does not include starting etcdctl.
pub fn with_timed_writer<T>(
    underlay: &str,
    f: impl FnOnce(&dyn Fn(&str, Option<&str>) -> (Instant, Instant)) -> T,
) -> T {
    use std::sync::mpsc;
    let path = format!("/run/netns/{underlay}");
    let (req_tx, req_rx) = mpsc::channel::<(String, Option<String>)>();
    let (done_tx, done_rx) = mpsc::channel::<(Instant, Instant)>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let file = std::fs::File::open(&path).expect("underlay netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let mut client = rt
                .block_on(etcd_client::Client::connect([LOCAL_ENDPOINT], None))
                .expect("etcd client");
            for (key, value) in req_rx {
                let issued = Instant::now();
                match value {
                    Some(value) => drop(rt.block_on(client.put(key, value, None)).expect("put")),
                    None => drop(rt.block_on(client.delete(key, None)).expect("delete")),
                }
                if done_tx.send((issued, Instant::now())).is_err() {
                    return;
                }
            }
        });
        let put = |key: &str, value: Option<&str>| {
            req_tx
                .send((key.to_owned(), value.map(str::to_owned)))
                .expect("writer alive");
            done_rx.recv().expect("writer answered")
        };
        let result = f(&put);
        drop(req_tx);
        result
    })
}

/// Time from a lease written into etcd to the first ping answered by that node
/// (a flannel kernel node): median of 7 runs, printed. Run alone with
/// `cargo test --test netns etcd_lease_to_first_ping -- --nocapture`.
#[test]
fn etcd_lease_to_first_ping_latency() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    let etcd = EtcdServer::start(&lab);
    etcd.put(CONFIG_KEY, DEFAULT_NET_CONF);
    let weft = start_etcd_weftd(&mut lab, 0);
    let weft_mac = own_mac(&lab, 0);
    let ns0 = lab.ns(0).to_owned();
    let ns1 = lab.ns(1).to_owned();
    let kernel = KernelVtep {
        vni: 1,
        port: 4789,
        subnet: spare_subnets(200, &[weft]).next().unwrap(),
        mac: "0e:fa:00:00:00:01".into(),
    };
    kernel.create(&lab, &ns1, lab.nodes[1].ip);
    kernel.add_peer(&lab, &ns1, weft, lab.nodes[0].ip, &weft_mac);
    let key = lease_key(kernel.subnet);
    let value = kernel.lease_json(lab.nodes[1].ip);
    let target = kernel.subnet.network().to_string();
    let (mut latencies, mut commits) = with_timed_writer(&lab.underlay.clone(), |put| {
        let mut latencies = Vec::new();
        let mut commits = Vec::new();
        for round in 0..7 {
            // Pinging before the lease exists; the first reply ends it. ping
            // also gives up at the first ICMP error (it has a deadline), so
            // say what it saw, and when.
            let ping = Command::new("ip")
                .args([
                    "netns", "exec", &ns0, "ping", "-c", "1", "-w", "10", "-i", "0.001", &target,
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("ping");
            std::thread::sleep(Duration::from_millis(100));
            let (issued, confirmed) = put(&key, Some(&value));
            let out = ping.wait_with_output().expect("ping");
            let answered = Instant::now();
            assert!(
                out.status.success(),
                "round {round}: no reply {:?} after the lease was written; ping: {}{}",
                answered - issued,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            latencies.push(answered - issued);
            commits.push(confirmed - issued);
            etcd.del(&key);
            // weftd removes the route and drops the kernel's neighbour entry with
            // the lease, so the next run resolves the MAC afresh as a new lease would.
            wait_for(
                "route and neighbour removed",
                Duration::from_secs(5),
                || {
                    let neigh = lab.run(&ns0, &["ip", "neigh", "show", "dev", "flannel.1"]);
                    (!has_route(&lab, 0, kernel.subnet) && !neigh.contains(&target)).then_some(())
                },
            );
        }
        (latencies, commits)
    });
    latencies.sort();
    commits.sort();
    let ms = |d: &Duration| (d.as_secs_f64() * 10_000.0).round() / 10.0;
    let median = latencies[latencies.len() / 2];
    println!(
        "lease written in etcd -> first ping answered: median {} ms over {} runs (sorted: {:?} ms; ping every 1 ms; of which the etcd put itself: median {} ms)",
        ms(&median),
        latencies.len(),
        latencies.iter().map(ms).collect::<Vec<_>>(),
        ms(&commits[commits.len() / 2])
    );
    assert!(median < Duration::from_secs(1), "median {median:?}");
}
