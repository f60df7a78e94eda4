//! One plugin invocation: parameters and configuration in, result or error
//! out. Pure apart from the files it reads and writes and the delegate it runs,
//! so the dispatch is unit-tested with a fake environment and fake plugins.
//!
//! Order of checks (the reference implementation's, so runtimes see familiar
//! errors): `CNI_*` variables → (VERSION answers here) → stdin → JSON → network
//! name → container ID and interface name → `cniVersion` → the command.
//!
//! Failure policy: nothing is written before everything that can be checked
//! has been checked (configuration, `subnet.env`, delegate plugin present). If
//! the delegate's ADD fails, its DEL is run with the same configuration and the
//! saved file is removed once that DEL succeeds, so a failed ADD leaves no
//! address allocated, no interface and no file behind; if that DEL fails too
//! the file stays, and the runtime's DEL (which follows every failed ADD)
//! retries the teardown with it.

use super::invoke;
use super::netconf::{self, NetConf, VALID_ATTACHMENTS};
use super::spec::{self, CniError, Command, Params, code};
use super::store::DelegateStore;
use crate::core::subnet_env::SubnetEnv;
use serde_json::{Map, Value};
use std::path::Path;

/// What to print on stdout, and whether the exit status is 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The result or error JSON.
    pub stdout: String,
    /// Exit 0 (else non-zero).
    pub success: bool,
}

/// Runs one invocation. `read_stdin` is only called for commands that take a configuration.
pub fn run(
    getenv: impl Fn(&str) -> Option<String>,
    read_stdin: impl FnOnce() -> std::io::Result<Vec<u8>>,
) -> Reply {
    let mut version = spec::IMPLEMENTED_VERSION.to_owned();
    match dispatch(getenv, read_stdin, &mut version) {
        Ok(stdout) => Reply {
            stdout,
            success: true,
        },
        Err(e) => Reply {
            stdout: e.to_json(&version),
            success: false,
        },
    }
}

fn dispatch(
    getenv: impl Fn(&str) -> Option<String>,
    read_stdin: impl FnOnce() -> std::io::Result<Vec<u8>>,
    version: &mut String,
) -> Result<String, CniError> {
    let params = Params::from_env(getenv)?;
    if params.command == Command::Version {
        return Ok(spec::version_result());
    }
    let stdin = read_stdin()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("error reading from stdin: {e}")))?;
    let obj = netconf::decode(&stdin)?;
    if let Ok(declared) = netconf::cni_version(&obj)
        && spec::SUPPORTED_VERSIONS.contains(&declared.as_str())
    {
        *version = declared;
    }
    netconf::validate_name(&obj)?;
    let declared = netconf::cni_version(&obj)?;
    spec::check_version(&declared)?;
    let conf = NetConf::parse(&obj)?;
    match params.command {
        Command::Add => add(&params, &conf),
        Command::Del => del(&params, &conf).map(|()| String::new()),
        Command::Check => check(&params, &conf).map(|()| String::new()),
        Command::Status => status(&params, &conf).map(|()| String::new()),
        Command::Gc => gc(&params, &conf, &obj).map(|()| String::new()),
        Command::Version => Ok(spec::version_result()),
    }
}

/// Reads `subnet.env`, telling the operator what to look at when it is not there.
pub fn load_subnet_env(path: &Path) -> Result<SubnetEnv, CniError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "failed to load subnet.env: {} does not exist: weftd on this node has not written it yet (it does once it holds a subnet lease and is ready)",
                    path.display()
                ),
            )
            .with_details(format!(
                "check weftd on this node: is it running and ready (`weftd status`, its log, its /readyz)? \
                 If weftd runs with --subnet-file, that path must equal this plugin's \"subnetFile\" ({}). \
                 The runtime retries the pod sandbox.",
                path.display()
            )));
        }
        Err(e) => {
            return Err(CniError::new(
                code::IO_FAILURE,
                format!(
                    "failed to load subnet.env: cannot read {}: {e}",
                    path.display()
                ),
            ));
        }
    };
    SubnetEnv::parse(&text).map_err(|e| {
        CniError::new(
            code::INVALID_NETWORK_CONFIG,
            format!("failed to load subnet.env: {} is not valid: {e}", path.display()),
        )
        .with_details(
            "weftd on this node writes this file; check weftd's log, or remove the file and restart weftd",
        )
    })
}

fn delegate_type(delegate: &Map<String, Value>) -> &str {
    delegate
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("bridge")
}

fn add(params: &Params, conf: &NetConf) -> Result<String, CniError> {
    // A configuration error is reported even when subnet.env is missing.
    conf.check_delegate()?;
    let env = load_subnet_env(&conf.subnet_file)?;
    let delegate = conf.render_delegate(&env)?;
    let plugin = invoke::find_plugin(delegate_type(&delegate), &params.path)?;
    let config = serde_json::to_vec(&delegate).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            format!("error serializing delegate netconf: {e}"),
        )
    })?;
    let store = DelegateStore::new(&conf.data_dir);
    store.save(&params.container_id, &config)?;
    eprintln!(
        "weft-cni: ADD {}: delegating to {}: {}",
        params.container_id,
        plugin.display(),
        String::from_utf8_lossy(&config)
    );
    let result = invoke::exec(&plugin, Command::Add, &config).and_then(|out| {
        match serde_json::from_slice::<Value>(&out) {
            Ok(Value::Object(_)) => Ok(String::from_utf8_lossy(&out).trim().to_owned()),
            _ => Err(CniError::new(
                code::DECODING_FAILURE,
                format!(
                    "the {} plugin's ADD result is not a JSON object: {:?}",
                    delegate_type(&delegate),
                    String::from_utf8_lossy(&out)
                ),
            )),
        }
    });
    match result {
        Ok(out) => Ok(out),
        Err(e) if e.code == code::INCOMPATIBLE_VERSION => {
            // The delegate refused the version before doing anything; its DEL would refuse too.
            if let Err(rm) = store.remove(&params.container_id) {
                eprintln!("weft-cni: {rm}");
            }
            let details = format!(
                "{}; the {} plugin ({}) does not speak cniVersion {:?}: set a cniVersion it supports in the CNI configuration, or install newer CNI plugins",
                e.details,
                delegate_type(&delegate),
                plugin.display(),
                conf.cni_version
            );
            Err(e.with_details(details))
        }
        Err(e) => {
            // Undo what the delegate may have done (address, veth), then forget it.
            match invoke::exec(&plugin, Command::Del, &config) {
                Ok(_) => {
                    if let Err(rm) = store.remove(&params.container_id) {
                        eprintln!("weft-cni: {rm}");
                    }
                }
                Err(del) => eprintln!(
                    "weft-cni: ADD failed and so did the cleanup DEL ({del}); {} stays for the runtime's DEL",
                    store.path(&params.container_id).display()
                ),
            }
            Err(e)
        }
    }
}

fn del(params: &Params, conf: &NetConf) -> Result<(), CniError> {
    let store = DelegateStore::new(&conf.data_dir);
    let Some(saved) = store.load(&params.container_id)? else {
        // Unknown container, or already deleted: success (spec: DEL is idempotent).
        return Ok(());
    };
    let delegate = match saved_delegate(&saved) {
        Some(obj) => obj,
        None => {
            // What flannel does: the interface stays on the bridge until the node reboots.
            eprintln!(
                "weft-cni: DEL {}: {} is not a delegate configuration; removing it without a delegate DEL",
                params.container_id,
                store.path(&params.container_id).display()
            );
            return store.remove(&params.container_id);
        }
    };
    let plugin = invoke::find_plugin(delegate_type(&delegate), &params.path)?;
    invoke::exec(&plugin, Command::Del, &saved)?;
    store.remove(&params.container_id)
}

/// CHECK verifies weft's part of the pod's network: the container is known
/// (its delegate configuration is saved), the node still has the subnet the
/// pod's address came from (`subnet.env` now vs the saved `ranges`), and the
/// runtime's `prevResult` addresses lie in it. It does not delegate CHECK: the
/// reference `bridge` plugin's CHECK looks for each result route with an empty
/// gateway, but installs flannel's gateway-less routes via the bridge gateway,
/// so it fails every healthy pod of this configuration (flannel's own CHECK is
/// a no-op for that reason).
fn check(params: &Params, conf: &NetConf) -> Result<(), CniError> {
    if !spec::version_at_least(&conf.cni_version, "0.4.0") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "config version does not allow CHECK",
        ));
    }
    let store = DelegateStore::new(&conf.data_dir);
    let Some(saved) = store.load(&params.container_id)? else {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "no saved configuration for container {} in {}: ADD has not succeeded for it on this node",
                params.container_id,
                conf.data_dir.display()
            ),
        ));
    };
    let ranges: Vec<ipnet::IpNet> = serde_json::from_slice::<Value>(&saved)
        .ok()
        .and_then(|d| d["ipam"]["ranges"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|set| set[0]["subnet"].as_str().and_then(|s| s.parse().ok()))
        .collect();
    if ranges.is_empty() {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            format!(
                "{} has no ipam ranges: it is not a delegate configuration weft-cni saved",
                store.path(&params.container_id).display()
            ),
        ));
    }
    let env = load_subnet_env(&conf.subnet_file)?;
    let current: Vec<ipnet::IpNet> = env
        .subnet
        .map(ipnet::IpNet::V4)
        .into_iter()
        .chain(env.ipv6_subnet.map(ipnet::IpNet::V6))
        .collect();
    if let Some(gone) = ranges.iter().find(|r| !current.contains(r)) {
        let now: Vec<String> = current.iter().map(ToString::to_string).collect();
        return Err(CniError::new(
            code::SUBNET_CHANGED,
            format!(
                "the pod's subnet {gone} is no longer this node's (now {}, from {}): the node's lease changed since the pod was created; recreate the pod",
                now.join(", "),
                conf.subnet_file.display()
            ),
        ));
    }
    let addresses = conf
        .prev_result
        .as_ref()
        .and_then(|r| r["ips"].as_array().cloned())
        .unwrap_or_default();
    for ip in &addresses {
        let Some(address) = ip["address"]
            .as_str()
            .and_then(|a| a.parse::<ipnet::IpNet>().ok())
        else {
            return Err(CniError::new(
                code::DECODING_FAILURE,
                format!("prevResult has an address that is not ADDRESS/PREFIX: {ip}"),
            ));
        };
        if !ranges.iter().any(|r| r.contains(&address.addr())) {
            return Err(CniError::new(
                code::SUBNET_CHANGED,
                format!(
                    "the pod's address {address} is outside its subnet ({})",
                    ranges
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The interface name GC assumes for a stale attachment it tears down with the
/// delegate's DEL: weft-cni's saved file (flannel's format, the delegate
/// configuration alone) does not record `CNI_IFNAME`, and Kubernetes runtimes
/// (containerd, CRI-O) name the pod network's interface `eth0`.
pub const GC_IFNAME: &str = "eth0";

/// GC (spec 1.1.0): forgets the containers that are not in the runtime's
/// `cni.dev/valid-attachments` and has the delegate release what they held.
///
/// - A delegate that speaks 1.1.0 gets the GC (spec: a plugin MUST forward
///   it) with the valid list, in the configuration ADD would render now (or,
///   when `subnet.env` is gone, as a saved configuration has it); once it succeeded,
///   the stale saved configurations are removed.
/// - An older delegate (Debian 12's reference plugins, 1.1.1, stop at 1.0.0)
///   does not know GC. Each stale container is then torn down with the
///   delegate's DEL, with its saved configuration, its container ID,
///   [`GC_IFNAME`] and no namespace: host-local releases the address; the
///   interface went with the namespace. Its saved file is removed once that
///   DEL succeeded, so a failure leaves the record for a later GC. (Without
///   the namespace the bridge cannot find the pod's address, so the per-pod
///   masquerade chain it adds with `ipMasq` stays.)
///
/// A container in the valid list is never touched, whatever its interface
/// name (the saved files are per container, as flannel's). Errors do not stop
/// the sweep; the first is returned, with all of them in `details`.
fn gc(params: &Params, conf: &NetConf, obj: &Map<String, Value>) -> Result<(), CniError> {
    if !spec::version_at_least(&conf.cni_version, "1.1.0") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "config version does not allow GC",
        ));
    }
    let (valid, raw_valid) = netconf::valid_attachments(obj)?;
    conf.check_delegate()?;
    let store = DelegateStore::new(&conf.data_dir);
    let saved = store.containers()?;
    let stale: Vec<&String> = saved
        .iter()
        .filter(|id| !valid.iter().any(|a| &a.container_id == *id))
        .collect();
    let delegate = match load_subnet_env(&conf.subnet_file) {
        Ok(env) => Some(conf.render_delegate(&env)?),
        // A node just rebooted: weftd has not written subnet.env yet.
        Err(e) if e.code == code::TRY_AGAIN_LATER => saved
            .iter()
            .rev()
            .find_map(|id| saved_delegate(&store.load(id).ok().flatten()?)),
        Err(e) => return Err(e),
    };
    let Some(mut delegate) = delegate else {
        eprintln!(
            "weft-cni: GC: no {} and nothing saved in {}: nothing to clean up",
            conf.subnet_file.display(),
            conf.data_dir.display()
        );
        return Ok(());
    };
    let plugin = invoke::find_plugin(delegate_type(&delegate), &params.path)?;
    let mut errors = Vec::new();
    if invoke::speaks(&plugin, "1.1.0")? {
        delegate.insert("cniVersion".into(), Value::String(conf.cni_version.clone()));
        delegate.insert(VALID_ATTACHMENTS.into(), raw_valid);
        let config = serde_json::to_vec(&delegate).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                format!("error serializing delegate netconf: {e}"),
            )
        })?;
        invoke::exec(&plugin, Command::Gc, &config)?;
        for id in &stale {
            if let Err(e) = store.remove(id) {
                errors.push(e);
            }
        }
    } else {
        for id in &stale {
            if let Err(e) = gc_del(params, &store, id) {
                errors.push(e);
            }
        }
    }
    eprintln!(
        "weft-cni: GC: {} valid attachment(s), {} saved, {} stale, {} error(s)",
        valid.len(),
        saved.len(),
        stale.len(),
        errors.len()
    );
    let Some(first) = errors.first() else {
        return Ok(());
    };
    let all: Vec<String> = errors.iter().map(|e| e.msg.clone()).collect();
    Err(CniError::new(
        first.code,
        format!(
            "GC could not clean up {} of {} stale container(s): {}",
            errors.len(),
            stale.len(),
            first.msg
        ),
    )
    .with_details(all.join("; ")))
}

/// A saved delegate configuration, if it is one (an object with a string `type`).
fn saved_delegate(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(obj)) if obj.get("type").is_some_and(Value::is_string) => Some(obj),
        _ => None,
    }
}

/// GC's teardown of one stale container through an older delegate's DEL.
fn gc_del(params: &Params, store: &DelegateStore, id: &str) -> Result<(), CniError> {
    let Some(saved) = store.load(id)? else {
        return Ok(());
    };
    let Some(delegate) = saved_delegate(&saved) else {
        eprintln!(
            "weft-cni: GC: {} is not a delegate configuration; removing it",
            store.path(id).display()
        );
        return store.remove(id);
    };
    let plugin = invoke::find_plugin(delegate_type(&delegate), &params.path)?;
    invoke::exec_for(&plugin, Command::Del, &saved, id, GC_IFNAME)?;
    store.remove(id)
}

/// STATUS (spec 1.1.0): ready when `subnet.env` is there and valid and the delegate plugin is installed.
fn status(params: &Params, conf: &NetConf) -> Result<(), CniError> {
    let not_available = |e: CniError| CniError {
        code: code::NOT_AVAILABLE,
        ..e
    };
    let env = load_subnet_env(&conf.subnet_file).map_err(not_available)?;
    let delegate = conf.render_delegate(&env).map_err(not_available)?;
    invoke::find_plugin(delegate_type(&delegate), &params.path).map_err(not_available)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SUBNET_ENV: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

    /// A fake `bridge` that logs each call's command and stdin, and fails ADD when told to.
    struct World {
        dir: tempfile::TempDir,
    }

    impl World {
        /// `add_fails`: the error code the fake bridge's ADD returns, if any.
        fn new(add_fails: Option<u32>) -> World {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("bin")).unwrap();
            std::fs::write(dir.path().join("subnet.env"), SUBNET_ENV).unwrap();
            let fail = match add_fails {
                Some(code) => format!(
                    r#"if [ "$CNI_COMMAND" = ADD ]; then echo '{{"code":{code},"msg":"no luck"}}'; exit 1; fi"#
                ),
                None => String::new(),
            };
            // VERSION answers from the file `versions` (Debian 12's plugins: up to 1.0.0); the
            // other calls are logged, their attachment to `attachments`.
            std::fs::write(
                dir.path().join("versions"),
                r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}"#,
            )
            .unwrap();
            let body = format!(
                "#!/bin/sh\nif [ \"$CNI_COMMAND\" = VERSION ]; then cat {0}/versions; exit 0; fi\n\
                 printf '%s %s %s %s\\n' \"$CNI_COMMAND\" \"$CNI_CONTAINERID\" \"$CNI_IFNAME\" \"${{CNI_NETNS:-none}}\" >>{0}/attachments\n\
                 if [ -e {0}/gc-fails ] && [ \"$CNI_COMMAND\" = GC ]; then echo '{{\"code\":5,\"msg\":\"disk\"}}'; exit 1; fi\n\
                 log={0}/calls\nprintf '%s ' \"$CNI_COMMAND\" >>$log\ncat >>$log\necho >>$log\n{fail}\n\
                 if [ \"$CNI_COMMAND\" = ADD ]; then echo '{{\"cniVersion\":\"0.3.1\",\"ips\":[{{\"version\":\"4\",\"address\":\"10.1.17.2/24\"}}]}}'; fi\n",
                dir.path().display()
            );
            let bridge = dir.path().join("bin/bridge");
            crate::cni::invoke::write_test_plugin(&bridge, &body);
            World { dir }
        }

        fn conf(&self, version: &str) -> String {
            format!(
                r#"{{"cniVersion":"{version}","name":"cbr0","type":"weft-cni","subnetFile":"{0}/subnet.env","dataDir":"{0}/data",
                    "prevResult":{{"cniVersion":"{version}","ips":[]}}}}"#,
                self.dir.path().display()
            )
        }

        fn call(&self, command: &str, container: &str, stdin: &str) -> Reply {
            let mut env: HashMap<String, String> = [
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", container),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_IFNAME", "eth0"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            env.insert(
                "CNI_PATH".into(),
                format!("/nonexistent:{}", self.dir.path().join("bin").display()),
            );
            let stdin = stdin.as_bytes().to_vec();
            run(move |k| env.get(k).cloned(), move || Ok(stdin))
        }

        /// `COMMAND CNI_CONTAINERID CNI_IFNAME CNI_NETNS` of each delegate call (VERSION not).
        fn attachments(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("attachments")).unwrap_or_default()
        }

        /// A GC configuration with these valid attachments.
        fn gc_conf(&self, version: &str, valid: &[(&str, &str)]) -> String {
            let list: Vec<Value> = valid
                .iter()
                .map(|(id, ifname)| serde_json::json!({"containerID": id, "ifname": ifname}))
                .collect();
            let mut conf: Value = serde_json::from_str(&self.conf(version)).unwrap();
            conf[VALID_ATTACHMENTS] = Value::Array(list);
            conf.to_string()
        }

        fn calls(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("calls")).unwrap_or_default()
        }

        fn saved(&self, container: &str) -> Option<String> {
            std::fs::read_to_string(self.dir.path().join("data").join(container)).ok()
        }
    }

    fn error(reply: &Reply) -> Value {
        assert!(!reply.success, "expected an error: {}", reply.stdout);
        serde_json::from_str(&reply.stdout).unwrap()
    }

    #[test]
    fn add_saves_the_delegate_and_del_uses_it() {
        let w = World::new(None);
        let reply = w.call("ADD", "c1", &w.conf("0.3.1"));
        assert!(reply.success, "{}", reply.stdout);
        // The delegate's result passes through unchanged.
        assert_eq!(
            reply.stdout,
            r#"{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.1.17.2/24"}]}"#
        );
        let saved = w.saved("c1").unwrap();
        assert_eq!(
            saved,
            r#"{"cniVersion":"0.3.1","ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cbr0","type":"bridge"}"#
        );
        assert_eq!(w.calls(), format!("ADD {saved}\n"));
        // DEL works without subnet.env, with the saved bytes.
        std::fs::remove_file(w.dir.path().join("subnet.env")).unwrap();
        let reply = w.call("DEL", "c1", &w.conf("0.3.1"));
        assert_eq!(
            reply,
            Reply {
                stdout: String::new(),
                success: true
            }
        );
        assert_eq!(w.calls(), format!("ADD {saved}\nDEL {saved}\n"));
        assert_eq!(w.saved("c1"), None);
        // A second DEL, and a DEL of a container never seen, succeed without calling the delegate.
        assert!(w.call("DEL", "c1", &w.conf("0.3.1")).success);
        assert!(w.call("DEL", "never", &w.conf("0.3.1")).success);
        assert_eq!(w.calls().lines().count(), 2);
    }

    #[test]
    fn failed_delegate_add_is_rolled_back() {
        let w = World::new(Some(11));
        let reply = w.call("ADD", "c1", &w.conf("1.0.0"));
        let e = error(&reply);
        assert_eq!(e["code"], 11);
        assert_eq!(e["msg"], "delegate plugin bridge failed (ADD): no luck");
        assert_eq!(e["cniVersion"], "1.0.0");
        let calls = w.calls();
        assert!(
            calls.starts_with("ADD ") && calls.contains("\nDEL "),
            "{calls}"
        );
        assert_eq!(w.saved("c1"), None, "no file left after a failed ADD");
    }

    #[test]
    fn a_delegate_refusing_the_version_leaves_nothing_and_says_what_to_do() {
        let w = World::new(Some(1));
        let e = error(&w.call("ADD", "c1", &w.conf("1.0.0")));
        assert_eq!(e["code"], code::INCOMPATIBLE_VERSION);
        assert!(
            e["details"]
                .as_str()
                .unwrap()
                .contains("install newer CNI plugins")
        );
        assert!(!w.calls().contains("DEL"), "no DEL with a refused version");
        assert_eq!(w.saved("c1"), None);
    }

    #[test]
    fn missing_subnet_env_says_what_to_do_and_leaves_nothing() {
        let w = World::new(None);
        std::fs::remove_file(w.dir.path().join("subnet.env")).unwrap();
        let e = error(&w.call("ADD", "c1", &w.conf("0.3.1")));
        assert_eq!(e["code"], code::TRY_AGAIN_LATER);
        let msg = e["msg"].as_str().unwrap();
        let path = w.dir.path().join("subnet.env").display().to_string();
        assert!(
            msg.contains(&path) && msg.contains("weftd on this node"),
            "{msg}"
        );
        assert!(e["details"].as_str().unwrap().contains("weftd status"));
        assert_eq!(w.calls(), "", "the delegate was not run");
        assert!(!w.dir.path().join("data").exists(), "nothing written");
        // STATUS reports the same as not available.
        let e = error(&w.call("STATUS", "", &w.conf("1.1.0")));
        assert_eq!(e["code"], code::NOT_AVAILABLE);
    }

    #[test]
    fn gc_with_an_older_delegate_deletes_each_stale_container() {
        let w = World::new(None);
        for c in ["c1", "c2", "c3"] {
            assert!(w.call("ADD", c, &w.conf("1.0.0")).success);
        }
        let saved3 = w.saved("c3").unwrap();
        let before = w.calls();
        // c2 is valid on another interface: a container in the list is never touched.
        let reply = w.call(
            "GC",
            "",
            &w.gc_conf("1.1.0", &[("c1", "eth0"), ("c2", "net1")]),
        );
        assert!(reply.success && reply.stdout.is_empty(), "{reply:?}");
        assert!(w.saved("c1").is_some() && w.saved("c2").is_some());
        assert_eq!(w.saved("c3"), None);
        // The delegate (no GC in 1.0.0) got c3's DEL, with its saved bytes, eth0 and no namespace.
        assert_eq!(w.calls(), format!("{before}DEL {saved3}\n"));
        assert!(
            w.attachments().ends_with("DEL c3 eth0 none\n"),
            "{}",
            w.attachments()
        );
        // Nothing stale left: a second GC changes nothing.
        let calls = w.calls();
        assert!(
            w.call(
                "GC",
                "",
                &w.gc_conf("1.1.0", &[("c1", "eth0"), ("c2", "net1")])
            )
            .success
        );
        assert_eq!(w.calls(), calls);
        // No valid attachment at all: everything goes.
        assert!(w.call("GC", "", &w.gc_conf("1.1.0", &[])).success);
        assert_eq!((w.saved("c1"), w.saved("c2")), (None, None));
    }

    #[test]
    fn gc_is_forwarded_to_a_delegate_that_speaks_1_1_0() {
        let w = World::new(None);
        std::fs::write(
            w.dir.path().join("versions"),
            r#"{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#,
        )
        .unwrap();
        for c in ["c1", "c2"] {
            assert!(w.call("ADD", c, &w.conf("1.0.0")).success);
        }
        // The delegate's GC fails: nothing is forgotten, the error is the delegate's.
        std::fs::write(w.dir.path().join("gc-fails"), "").unwrap();
        let e = error(&w.call("GC", "", &w.gc_conf("1.1.0", &[("c1", "eth0")])));
        assert_eq!(e["code"], 5);
        assert_eq!(e["msg"], "delegate plugin bridge failed (GC): disk");
        assert!(w.saved("c2").is_some());
        std::fs::remove_file(w.dir.path().join("gc-fails")).unwrap();
        let reply = w.call("GC", "", &w.gc_conf("1.1.0", &[("c1", "eth0")]));
        assert!(reply.success, "{reply:?}");
        assert!(w.saved("c1").is_some());
        assert_eq!(w.saved("c2"), None);
        let last = w.calls().lines().last().unwrap().to_owned();
        let gc: Value = serde_json::from_str(last.strip_prefix("GC ").unwrap()).unwrap();
        assert_eq!(gc["cniVersion"], "1.1.0");
        assert_eq!(gc["type"], "bridge");
        assert_eq!(gc["ipam"]["ranges"][0][0]["subnet"], "10.1.17.0/24");
        assert_eq!(
            gc[VALID_ATTACHMENTS],
            serde_json::json!([{"containerID": "c1", "ifname": "eth0"}])
        );
        assert!(!w.calls().contains("DEL"), "GC, not DEL");
        // After a reboot (no subnet.env yet) the delegate still gets its GC, from a saved configuration.
        std::fs::remove_file(w.dir.path().join("subnet.env")).unwrap();
        assert!(w.call("GC", "", &w.gc_conf("1.1.0", &[])).success);
        assert_eq!(w.saved("c1"), None);
        let last = w.calls().lines().last().unwrap().to_owned();
        assert!(last.starts_with("GC {"), "{last}");
        // Nothing saved and no subnet.env: nothing to do, and no delegate to ask.
        let calls = w.calls();
        assert!(w.call("GC", "", &w.gc_conf("1.1.0", &[])).success);
        assert_eq!(w.calls(), calls);
    }

    #[test]
    fn gc_refuses_what_could_remove_the_wrong_containers() {
        let w = World::new(None);
        assert!(w.call("ADD", "c1", &w.conf("1.0.0")).success);
        let calls = w.calls();
        // No valid list: never read as "nothing is valid".
        let e = error(&w.call("GC", "", &w.conf("1.1.0")));
        assert_eq!(e["code"], code::INVALID_NETWORK_CONFIG);
        assert!(e["msg"].as_str().unwrap().contains(VALID_ATTACHMENTS));
        let bad = w.conf("1.1.0").replace(
            r#""type":"weft-cni""#,
            r#""type":"weft-cni","cni.dev/valid-attachments":"c1""#,
        );
        assert_eq!(
            error(&w.call("GC", "", &bad))["code"],
            code::INVALID_NETWORK_CONFIG
        );
        // GC is 1.1.0's.
        let e = error(&w.call("GC", "", &w.gc_conf("1.0.0", &[])));
        assert_eq!(
            (e["code"].as_u64(), e["msg"].as_str()),
            (Some(1), Some("config version does not allow GC"))
        );
        // No delegate plugin: an error, and the record stays for a later GC.
        let mut no_path = w.gc_conf("1.1.0", &[]);
        no_path = no_path.replace(
            r#""type":"weft-cni""#,
            r#""type":"weft-cni","delegate":{"type":"nope"}"#,
        );
        let e = error(&w.call("GC", "", &no_path));
        assert_eq!(e["code"], code::INVALID_NETWORK_CONFIG);
        assert!(w.saved("c1").is_some());
        assert_eq!(w.calls(), calls);
    }

    #[test]
    fn status_and_version() {
        let w = World::new(None);
        assert!(w.call("STATUS", "", &w.conf("1.1.0")).success);
        let reply = w.call("VERSION", "", "this is not read");
        assert!(reply.success);
        assert!(reply.stdout.contains("\"supportedVersions\""));
    }

    #[test]
    fn check_verifies_the_container_subnet_and_prev_result() {
        let w = World::new(None);
        assert!(w.call("ADD", "c1", &w.conf("1.0.0")).success);
        let with_prev = |address: &str| {
            w.conf("1.0.0").replace(
                r#""ips":[]"#,
                &format!(r#""ips":[{{"address":"{address}"}}]"#),
            )
        };
        let ok = w.call("CHECK", "c1", &with_prev("10.1.17.2/24"));
        assert!(ok.success, "{}", ok.stdout);
        assert_eq!(w.calls().lines().count(), 1, "CHECK is not delegated");
        let e = error(&w.call("CHECK", "c1", &with_prev("10.9.9.9/24")));
        assert_eq!(e["code"], code::SUBNET_CHANGED);
        // The node's lease changed under the pod.
        std::fs::write(
            w.dir.path().join("subnet.env"),
            SUBNET_ENV.replace("10.1.17.1/24", "10.1.18.1/24"),
        )
        .unwrap();
        let e = error(&w.call("CHECK", "c1", &with_prev("10.1.17.2/24")));
        assert_eq!(e["code"], code::SUBNET_CHANGED);
        assert!(
            e["msg"]
                .as_str()
                .unwrap()
                .contains("10.1.17.0/24 is no longer this node's")
        );
        let e = error(&w.call("CHECK", "unknown", &w.conf("1.0.0")));
        assert_eq!(e["code"], code::UNKNOWN_CONTAINER);
        let e = error(&w.call("CHECK", "c1", &w.conf("0.3.1")));
        assert_eq!(
            (e["code"].as_u64(), e["msg"].as_str()),
            (Some(1), Some("config version does not allow CHECK"))
        );
    }

    /// A dual-stack subnet.env: ADD saves flannel's delegate with both
    /// families' ranges and routes; CHECK checks the addresses of both
    /// families against them and sees an IPv6 lease change.
    #[test]
    fn dual_stack_add_saves_both_families_and_check_verifies_both() {
        let w = World::new(None);
        let dual = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
        std::fs::write(w.dir.path().join("subnet.env"), dual).unwrap();
        assert!(w.call("ADD", "c1", &w.conf("1.0.0")).success);
        assert_eq!(
            w.saved("c1").unwrap(),
            r#"{"cniVersion":"1.0.0","ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}],[{"subnet":"fc00::/64"}]],"routes":[{"dst":"10.1.0.0/16"},{"dst":"fc00::/48"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cbr0","type":"bridge"}"#
        );
        let with_prev = |addresses: &[&str]| {
            let ips: Vec<String> = addresses
                .iter()
                .map(|a| format!(r#"{{"address":"{a}"}}"#))
                .collect();
            w.conf("1.0.0")
                .replace(r#""ips":[]"#, &format!(r#""ips":[{}]"#, ips.join(",")))
        };
        let ok = w.call("CHECK", "c1", &with_prev(&["10.1.17.2/24", "fc00::2/64"]));
        assert!(ok.success, "{}", ok.stdout);
        let e = error(&w.call("CHECK", "c1", &with_prev(&["10.1.17.2/24", "fc01::2/64"])));
        assert_eq!(e["code"], code::SUBNET_CHANGED);
        assert!(e["msg"].as_str().unwrap().contains("fc01::2/64 is outside"));
        // The node's IPv6 lease changed under the pod.
        std::fs::write(
            w.dir.path().join("subnet.env"),
            dual.replace("fc00::1/64", "fc00:0:0:1::1/64"),
        )
        .unwrap();
        let e = error(&w.call("CHECK", "c1", &with_prev(&["10.1.17.2/24", "fc00::2/64"])));
        assert_eq!(e["code"], code::SUBNET_CHANGED);
        assert!(
            e["msg"]
                .as_str()
                .unwrap()
                .contains("fc00::/64 is no longer this node's")
        );
        // DEL hands the saved dual-stack delegate to the bridge as it is.
        assert!(w.call("DEL", "c1", &w.conf("1.0.0")).success);
        assert!(w.saved("c1").is_none());
        assert!(
            w.calls()
                .lines()
                .last()
                .unwrap()
                .contains(r#"[{"subnet":"fc00::/64"}]"#)
        );
    }

    #[test]
    fn bad_input_codes() {
        let w = World::new(None);
        let e = error(&w.call("ADD", "c1", "{not json"));
        assert_eq!(e["code"], code::DECODING_FAILURE);
        let e = error(&w.call("ADD", "c1", &w.conf("0.2.0")));
        assert_eq!(e["code"], code::INCOMPATIBLE_VERSION);
        assert_eq!(
            e["cniVersion"], "1.1.0",
            "an unsupported version is not echoed"
        );
        let e = error(&w.call("ADD", "../../etc/passwd", &w.conf("0.3.1")));
        assert_eq!(e["code"], code::INVALID_ENVIRONMENT);
        let e = error(&w.call(
            "ADD",
            "c1",
            &w.conf("0.3.1").replace(
                "\"type\":\"weft-cni\"",
                "\"type\":\"weft-cni\",\"delegate\":{\"type\":\"nope\"}",
            ),
        ));
        assert_eq!(e["code"], code::INVALID_NETWORK_CONFIG);
        assert!(
            e["msg"]
                .as_str()
                .unwrap()
                .contains("failed to find plugin \"nope\"")
        );
        let e = error(&w.call("FROB", "c1", &w.conf("0.3.1")));
        assert_eq!(e["code"], code::INVALID_ENVIRONMENT);
        let e = error(&w.call("ADD", "c1", r#"{"cniVersion":"0.3.1","type":"weft-cni"}"#));
        assert_eq!(e["msg"], "missing network name");
        assert_eq!(w.calls(), "");
        assert!(!w.dir.path().join("data").exists());
    }
}
