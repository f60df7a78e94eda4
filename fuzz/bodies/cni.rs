//! The CNI plugin's input: the network configuration on stdin and the
//! `subnet.env` it reads.
//!
//! Two parts, both fed from the same input:
//! - the pure pipeline of an ADD with a fuzzed `subnet.env`: `SubnetEnv::parse`,
//!   `netconf::decode`, `validate_name`, `cni_version`, `spec::check_version`,
//!   `NetConf::parse`, `render_delegate`. Invariants: no panic; errors carry a
//!   well-known code and render as a CNI error result; a rendered delegate has
//!   this network's name and version, `ranges` from the node's subnets and
//!   the cluster networks appended to `routes`, exactly as flannel's plugin.
//! - the whole invocation, `plugin::run`, with the stdin bytes and each
//!   `CNI_COMMAND`, in a sandbox: a valid `subnet.env`, one saved delegate and
//!   an empty `CNI_PATH` (no delegate plugin, so nothing is ever executed).
//!   `subnetFile` and `dataDir` of a configuration object are pointed into the
//!   sandbox, so nothing outside it is read. Invariants: no panic; a failure
//!   prints a CNI error result (JSON with code and msg); only VERSION, a DEL
//!   of an unknown container or a CHECK of the saved one can succeed (a GC
//!   cannot: there is no delegate to forward it to, so it removes nothing);
//!   the sandbox is unchanged afterwards (no file written or removed).
//!
//! Input: `[command][container][ifname] subnet.env text \0 stdin bytes`.

use super::input::{self, Input};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use weft::cni::netconf::{self, NetConf};
use weft::cni::plugin;
use weft::cni::spec::{self, CniError};
use weft::core::subnet_env::SubnetEnv;

const COMMANDS: [&str; 8] = ["ADD", "DEL", "CHECK", "STATUS", "VERSION", "", "GET", "GC"];
const CONTAINERS: [&str; 4] = ["saved1", "absent1", "", "../etc"];
const IFNAMES: [&str; 4] = ["eth0", "", "a/b", "0123456789abcdef"];
const SUBNET_ENV: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
const SAVED: &str = r#"{"cniVersion":"0.3.1","ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cbr0","type":"bridge"}"#;
const CODES: [u32; 10] = [1, 2, 3, 4, 5, 6, 7, 11, 50, 100];

/// A directory with a `subnet.env`, a data dir holding the delegate of
/// container `saved1`, and an empty plugin dir. Removed when dropped.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("weft-fuzz-cni-")
            .tempdir()
            .expect("a temporary directory");
        std::fs::write(dir.path().join("subnet.env"), SUBNET_ENV).expect("subnet.env");
        std::fs::create_dir(dir.path().join("data")).expect("data dir");
        std::fs::write(dir.path().join("data/saved1"), SAVED).expect("saved delegate");
        std::fs::create_dir(dir.path().join("bin")).expect("bin dir");
        Sandbox { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Everything in the sandbox, to compare before and after.
    fn contents(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            let mut entries: Vec<_> = std::fs::read_dir(dir)
                .expect("the sandbox is readable")
                .map(|e| e.expect("an entry").path())
                .collect();
            entries.sort();
            for p in entries {
                if p.is_dir() {
                    out.push((p.clone(), Vec::new()));
                    walk(&p, out);
                } else {
                    let bytes = std::fs::read(&p).expect("a file");
                    out.push((p, bytes));
                }
            }
        }
        let mut out = Vec::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

thread_local! {
    // Per thread, so parallel tests never share it; removed when the thread ends.
    static SANDBOX: Sandbox = Sandbox::new();
}

fn check_error(e: &CniError, version: &str) {
    assert!(CODES.contains(&e.code), "{e:?}");
    assert!(!e.msg.is_empty());
    let json: Value = serde_json::from_str(&e.to_json(version)).expect("an error result is JSON");
    assert_eq!(json["code"], e.code);
    assert_eq!(json["msg"], e.msg.as_str());
}

/// ADD's rendering, without files: the configuration and a fuzzed `subnet.env`.
fn check_render(env_text: &str, stdin: &[u8]) -> Result<(), CniError> {
    let env = SubnetEnv::parse(env_text).ok();
    let obj = netconf::decode(stdin)?;
    netconf::validate_name(&obj)?;
    let version = netconf::cni_version(&obj)?;
    spec::check_version(&version)?;
    let conf = NetConf::parse(&obj)?;
    assert_eq!(conf.cni_version, version);
    let Some(env) = env else { return Ok(()) };
    let delegate = conf.render_delegate(&env)?;
    assert_eq!(delegate["name"], conf.name.as_str());
    assert!(delegate["type"].is_string(), "{delegate:?}");
    if !version.is_empty() {
        assert_eq!(delegate["cniVersion"], version.as_str());
    }
    let ipam = delegate["ipam"].as_object().expect("ipam is an object");
    assert!(ipam.contains_key("type"));
    let ranges: Vec<String> = ipam["ranges"]
        .as_array()
        .expect("ranges")
        .iter()
        .map(|r| r[0]["subnet"].as_str().expect("a subnet").to_owned())
        .collect();
    let want: Vec<String> = env
        .subnet
        .map(|s| s.to_string())
        .into_iter()
        .chain(env.ipv6_subnet.map(|s| s.to_string()))
        .collect();
    assert_eq!(ranges, want);
    let routes: Vec<Value> = ipam["routes"].as_array().expect("routes").clone();
    let networks: Vec<Value> = env
        .network
        .map(|n| n.to_string())
        .into_iter()
        .chain(env.ipv6_network.map(|n| n.to_string()))
        .map(|dst| serde_json::json!({ "dst": dst }))
        .collect();
    assert!(routes.ends_with(&networks), "{routes:?}");
    for r in &routes {
        assert!(
            r["dst"]
                .as_str()
                .is_some_and(|d| d.parse::<ipnet::IpNet>().is_ok()),
            "{r}"
        );
    }
    let bytes = serde_json::to_vec(&delegate).expect("a delegate serialises");
    let back: Map<String, Value> = serde_json::from_slice(&bytes).expect("and parses");
    assert_eq!(back, delegate);
    Ok(())
}

/// The stdin with `subnetFile` and `dataDir` (any case) pointed into the sandbox.
fn confined(stdin: &[u8], sandbox: &Sandbox) -> Vec<u8> {
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(stdin) else {
        return stdin.to_vec(); // refused before any file is read
    };
    obj.retain(|k, _| !k.eq_ignore_ascii_case("subnetFile") && !k.eq_ignore_ascii_case("dataDir"));
    let path = |name: &str| Value::String(sandbox.path(name).display().to_string());
    obj.insert("subnetFile".into(), path("subnet.env"));
    obj.insert("dataDir".into(), path("data"));
    serde_json::to_vec(&obj).expect("an object serialises")
}

fn check_run(command: &str, container: &str, ifname: &str, stdin: &[u8], sandbox: &Sandbox) {
    let before = sandbox.contents();
    let stdin = confined(stdin, sandbox);
    let bin = sandbox.path("bin").display().to_string();
    let env = |name: &str| -> Option<String> {
        match name {
            "CNI_COMMAND" => Some(command.to_owned()),
            "CNI_CONTAINERID" => Some(container.to_owned()),
            "CNI_NETNS" => Some("/var/run/netns/fuzz".to_owned()),
            "CNI_IFNAME" => Some(ifname.to_owned()),
            "CNI_PATH" => Some(bin.clone()),
            _ => None,
        }
    };
    let reply = plugin::run(env, || Ok(stdin.clone()));
    if reply.success {
        let allowed = command == "VERSION"
            || (command == "DEL" && container == "absent1")
            || (command == "CHECK" && container == "saved1");
        assert!(
            allowed,
            "{command} {container} succeeded: {:?}",
            reply.stdout
        );
        if command == "VERSION" {
            let v: Value = serde_json::from_str(&reply.stdout).expect("VERSION prints JSON");
            assert!(v["supportedVersions"].is_array());
        } else {
            assert!(reply.stdout.is_empty());
        }
    } else {
        let v: Value = serde_json::from_str(&reply.stdout).expect("an error result is JSON");
        assert!(
            v["code"]
                .as_u64()
                .is_some_and(|c| CODES.contains(&(c as u32))),
            "{v}"
        );
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["cniVersion"].is_string(), "{v}");
    }
    assert!(sandbox.contents() == before, "the invocation changed files");
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let command = COMMANDS[usize::from(input.u8()) % COMMANDS.len()];
    let container = CONTAINERS[usize::from(input.u8()) % CONTAINERS.len()];
    let ifname = IFNAMES[usize::from(input.u8()) % IFNAMES.len()];
    let [env_text, stdin] = input::parts(input.rest(), 0, 2)[..] else {
        unreachable!("two parts")
    };
    let env_text = input::text(env_text);
    if let Err(e) = check_render(&env_text, stdin) {
        check_error(&e, spec::IMPLEMENTED_VERSION);
    }
    SANDBOX.with(|sandbox| check_run(command, container, ifname, stdin, sandbox));
}

pub fn seeds() -> Vec<Vec<u8>> {
    let v6_env = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n";
    let configs = [
        // flannel's conflist as the runtime hands its first plugin over.
        r#"{"cniVersion":"0.3.1","name":"cbr0","type":"weft-cni","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#,
        r#"{"cniVersion":"1.1.0","name":"cbr0","type":"weft-cni","subnetFile":"/run/flannel/subnet.env","dataDir":"/var/lib/cni/flannel","ipam":{"routes":[{"dst":"192.168.0.0/16"}]},"runtimeConfig":{"portMappings":[]}}"#,
        r#"{"cniVersion":"0.4.0","name":"cbr0","type":"weft-cni","prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.17.2/24"}]}}"#,
        r#"{"cniVersion":"1.0.0","name":"cbr0","type":"weft-cni","delegate":{"type":"ipvlan","name":"x"}}"#,
        // GC's valid list (spec 1.1.0), and its draft name.
        r#"{"cniVersion":"1.1.0","name":"cbr0","type":"weft-cni","cni.dev/valid-attachments":[{"containerID":"saved1","ifname":"eth0"}]}"#,
        r#"{"cniVersion":"1.1.0","name":"cbr0","type":"weft-cni","cni.dev/attachments":[]}"#,
    ];
    let mut out = Vec::new();
    for (i, conf) in configs.iter().enumerate() {
        for cmd in [0u8, 1, 2, 3, 4, 7] {
            let env = if i % 2 == 0 { SUBNET_ENV } else { v6_env };
            let mut seed = vec![cmd, (i % 2) as u8, 0];
            seed.extend_from_slice(env.as_bytes());
            seed.push(0);
            seed.extend_from_slice(conf.as_bytes());
            out.push(seed);
        }
    }
    out
}
