//! The plugin's network configuration — flannel's CNI plugin configuration,
//! unchanged apart from `type` — and the delegate configuration built from it
//! and `subnet.env`, exactly as flannel's plugin builds it
//! (`flannel-io/cni-plugin` `cmdAdd`/`doCmdAdd`/`getDelegateIPAM`).
//!
//! The delegate is a JSON object whose keys serialise in sorted order, as Go's
//! `json.Marshal` of a map does, so the saved file is byte for byte what
//! flannel's plugin saves.

use super::spec::{CniError, code};
use crate::core::subnet_env::SubnetEnv;
use serde_json::{Map, Value};
use std::path::PathBuf;

/// flannel's default `subnetFile`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// flannel's default `dataDir` (where rendered delegates are kept for DEL).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// What the plugin reads from its configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `name`.
    pub name: String,
    /// `cniVersion`.
    pub cni_version: String,
    /// `subnetFile` (default `/run/flannel/subnet.env`).
    pub subnet_file: PathBuf,
    /// `dataDir` (default `/var/lib/cni/flannel`).
    pub data_dir: PathBuf,
    /// `delegate`: merged into the bridge configuration.
    pub delegate: Option<Map<String, Value>>,
    /// `ipam`: merged into the host-local configuration.
    pub ipam: Option<Map<String, Value>>,
    /// `runtimeConfig`, passed on to the delegate.
    pub runtime_config: Option<Map<String, Value>>,
    /// The previous plugin's result (CHECK passes it on to the delegate).
    pub prev_result: Option<Value>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_NETWORK_CONFIG, msg)
}

/// A field looked up as Go's `encoding/json` does: the exact key, else a
/// case-insensitive match.
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match field(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!(
            "failed to load netconf: {key:?} must be a string, not {other}"
        ))),
    }
}

fn object_field(
    obj: &Map<String, Value>,
    key: &str,
) -> Result<Option<Map<String, Value>>, CniError> {
    match field(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(other) => Err(invalid(format!(
            "failed to load netconf: {key:?} must be a JSON object, not {other}"
        ))),
    }
}

/// Decodes stdin into a JSON object (spec: code 6 when it is not one).
pub fn decode(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(other) => Err(CniError::new(
            code::DECODING_FAILURE,
            format!("error unmarshall network config: expected a JSON object, got {other}"),
        )),
        Err(e) => Err(CniError::new(
            code::DECODING_FAILURE,
            format!("error unmarshall network config: {e}"),
        )
        .with_details("the runtime passes the CNI configuration on stdin; check the conflist in the CNI configuration directory (e.g. /etc/cni/net.d) is valid JSON")),
    }
}

/// The network name rule (spec: alphanumeric, then `[A-Za-z0-9_.-]`), code 7.
pub fn validate_name(obj: &Map<String, Value>) -> Result<(), CniError> {
    let name = string_field(obj, "name")?.unwrap_or_default();
    if name.is_empty() {
        return Err(invalid("missing network name"));
    }
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !valid {
        return Err(invalid(format!(
            "invalid characters found in network name: {name}"
        )));
    }
    Ok(())
}

/// The declared `cniVersion` ("" when absent).
pub fn cni_version(obj: &Map<String, Value>) -> Result<String, CniError> {
    Ok(string_field(obj, "cniVersion")?.unwrap_or_default())
}

/// An attachment the runtime still has: one entry of GC's valid list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `containerID`: the `CNI_CONTAINERID` of its ADD.
    pub container_id: String,
    /// `ifname`: the `CNI_IFNAME` of its ADD.
    pub ifname: String,
}

/// The key of GC's valid attachments (spec 1.1.0).
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";
/// The same list under the name of a spec draft; libcni sends both.
pub const ATTACHMENTS_DRAFT: &str = "cni.dev/attachments";

/// GC's list of still valid attachments, with the raw value (passed on to a
/// delegate unchanged). `cni.dev/valid-attachments`, or `cni.dev/attachments`
/// when only that is there. Absent is an error, never an empty list: read as
/// empty, every attachment on the node would count as stale and be torn down.
pub fn valid_attachments(obj: &Map<String, Value>) -> Result<(Vec<Attachment>, Value), CniError> {
    let Some(raw) = obj
        .get(VALID_ATTACHMENTS)
        .or_else(|| obj.get(ATTACHMENTS_DRAFT))
        .filter(|v| !v.is_null())
    else {
        return Err(invalid(format!(
            "GC needs {VALID_ATTACHMENTS:?}, the attachments the runtime still has: without it every pod on the node would count as stale"
        ))
        .with_details("the runtime adds this key to the configuration of a GC (CNI spec 1.1.0); run GC through a runtime or libcni"));
    };
    let Value::Array(entries) = raw else {
        return Err(invalid(format!(
            "{VALID_ATTACHMENTS:?} must be a list of {{\"containerID\", \"ifname\"}} objects, not {raw}"
        )));
    };
    let mut attachments = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let Value::Object(entry) = entry else {
            return Err(invalid(format!(
                "{VALID_ATTACHMENTS:?}[{i}] must be an object, not {entry}"
            )));
        };
        let container_id = match field(entry, "containerID") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            other => {
                return Err(invalid(format!(
                    "{VALID_ATTACHMENTS:?}[{i}] has no \"containerID\" string (found {})",
                    other.map_or_else(|| "nothing".to_owned(), ToString::to_string)
                )));
            }
        };
        let ifname = match field(entry, "ifname") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(name)) => name.clone(),
            Some(other) => {
                return Err(invalid(format!(
                    "{VALID_ATTACHMENTS:?}[{i}].ifname must be a string, not {other}"
                )));
            }
        };
        attachments.push(Attachment {
            container_id,
            ifname,
        });
    }
    Ok((attachments, raw.clone()))
}

impl NetConf {
    /// Reads flannel's plugin configuration; `subnetFile` and `dataDir` take flannel's defaults.
    pub fn parse(obj: &Map<String, Value>) -> Result<NetConf, CniError> {
        Ok(NetConf {
            name: string_field(obj, "name")?.unwrap_or_default(),
            cni_version: cni_version(obj)?,
            subnet_file: string_field(obj, "subnetFile")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_SUBNET_FILE.to_owned())
                .into(),
            data_dir: string_field(obj, "dataDir")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned())
                .into(),
            delegate: object_field(obj, "delegate")?,
            ipam: object_field(obj, "ipam")?,
            runtime_config: object_field(obj, "runtimeConfig")?,
            prev_result: field(obj, "prevResult").filter(|v| !v.is_null()).cloned(),
        })
    }

    /// The delegate configuration for ADD, as flannel renders it:
    /// - `delegate` must not set `name` or `ipam`, and its `type`, if present, is a string;
    /// - `runtimeConfig` is copied in; `name` and `cniVersion` come from this network;
    /// - `type` defaults to `bridge`, `ipMasq` to `!FLANNEL_IPMASQ`, `mtu` to `FLANNEL_MTU`,
    ///   and a bridge gets `isGateway: true` unless it says otherwise;
    /// - `ipam` is this network's `ipam` (other keys kept) with `type` defaulting to
    ///   `host-local`, `ranges` replaced by the node's subnets and the cluster
    ///   networks appended to `routes`.
    pub fn render_delegate(&self, env: &SubnetEnv) -> Result<Map<String, Value>, CniError> {
        self.check_delegate()?;
        let mut delegate = self.delegate.clone().unwrap_or_default();
        if let Some(rc) = &self.runtime_config {
            delegate.insert("runtimeConfig".into(), Value::Object(rc.clone()));
        }
        delegate.insert("name".into(), Value::String(self.name.clone()));
        delegate
            .entry("type")
            .or_insert_with(|| Value::String("bridge".into()));
        delegate
            .entry("ipMasq")
            .or_insert(Value::Bool(!env.ip_masq));
        delegate.entry("mtu").or_insert(Value::from(env.mtu));
        if delegate.get("type").and_then(Value::as_str) == Some("bridge") {
            delegate.entry("isGateway").or_insert(Value::Bool(true));
        }
        if !self.cni_version.is_empty() {
            delegate.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        }
        delegate.insert("ipam".into(), Value::Object(self.delegate_ipam(env)?));
        Ok(delegate)
    }

    /// flannel's checks of the `delegate` dictionary, with flannel's messages.
    pub fn check_delegate(&self) -> Result<(), CniError> {
        let Some(delegate) = &self.delegate else {
            return Ok(());
        };
        if delegate.get("type").is_some_and(|t| !t.is_string()) {
            return Err(invalid(
                "'delegate' dictionary, if present, must have (string) 'type' field",
            ));
        }
        if delegate.contains_key("name") {
            return Err(invalid(
                "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
            ));
        }
        if delegate.contains_key("ipam") {
            return Err(invalid(
                "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel",
            ));
        }
        Ok(())
    }

    fn delegate_ipam(&self, env: &SubnetEnv) -> Result<Map<String, Value>, CniError> {
        let mut ipam = self.ipam.clone().unwrap_or_default();
        ipam.entry("type")
            .or_insert_with(|| Value::String("host-local".into()));
        let mut ranges = Vec::new();
        if let Some(subnet) = env.subnet {
            ranges.push(serde_json::json!([{ "subnet": subnet.to_string() }]));
        }
        if let Some(subnet) = env.ipv6_subnet {
            ranges.push(serde_json::json!([{ "subnet": subnet.to_string() }]));
        }
        ipam.insert("ranges".into(), Value::Array(ranges));
        let mut routes = match ipam.get("routes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(routes)) => {
                for route in routes {
                    let dst = route.get("dst").and_then(Value::as_str);
                    if dst.and_then(|d| d.parse::<ipnet::IpNet>().ok()).is_none() {
                        return Err(invalid(format!(
                            "failed to assemble Delegate IPAM: failed to read IPAM routes: {route} has no valid \"dst\" CIDR"
                        )));
                    }
                }
                routes.clone()
            }
            Some(other) => {
                return Err(invalid(format!(
                    "failed to assemble Delegate IPAM: failed to read IPAM routes: \"routes\" must be a list, not {other}"
                )));
            }
        };
        if let Some(network) = env.network {
            routes.push(serde_json::json!({ "dst": network.to_string() }));
        }
        if let Some(network) = env.ipv6_network {
            routes.push(serde_json::json!({ "dst": network.to_string() }));
        }
        ipam.insert("routes".into(), Value::Array(routes));
        Ok(ipam)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// flannel's test fixture (`flannel_linux_test.go`, `onlyIpv4FlannelSubnetEnv`).
    const SUBNET_ENV_V4: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

    fn conf(text: &str) -> NetConf {
        NetConf::parse(&decode(text.as_bytes()).unwrap()).unwrap()
    }

    fn render(conf_text: &str, env_text: &str) -> Result<Map<String, Value>, CniError> {
        conf(conf_text).render_delegate(&SubnetEnv::parse(env_text).unwrap())
    }

    #[test]
    fn gc_valid_attachments() {
        let parse = |text: &str| valid_attachments(&decode(text.as_bytes()).unwrap());
        let (list, raw) = parse(
            r#"{"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"},{"containerid":"c2"}]}"#,
        )
        .unwrap();
        assert_eq!(
            list,
            [
                Attachment {
                    container_id: "c1".into(),
                    ifname: "eth0".into()
                },
                Attachment {
                    container_id: "c2".into(),
                    ifname: String::new()
                }
            ]
        );
        assert_eq!(raw.as_array().unwrap().len(), 2, "passed on as given");
        // The draft's name, which libcni sends too; an empty list is a list.
        let (list, _) =
            parse(r#"{"cni.dev/attachments":[{"containerID":"c3","ifname":"net1"}]}"#).unwrap();
        assert_eq!(list[0].container_id, "c3");
        assert_eq!(parse(r#"{"cni.dev/valid-attachments":[]}"#).unwrap().0, []);
        // Absent is never "no attachment is valid".
        for bad in [
            r#"{}"#,
            r#"{"cni.dev/valid-attachments":null}"#,
            r#"{"cni.dev/valid-attachments":{"containerID":"c1"}}"#,
            r#"{"cni.dev/valid-attachments":["c1"]}"#,
            r#"{"cni.dev/valid-attachments":[{"ifname":"eth0"}]}"#,
            r#"{"cni.dev/valid-attachments":[{"containerID":""}]}"#,
            r#"{"cni.dev/valid-attachments":[{"containerID":7}]}"#,
            r#"{"cni.dev/valid-attachments":[{"containerID":"c1","ifname":0}]}"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.code, code::INVALID_NETWORK_CONFIG, "{bad}");
            assert!(
                e.msg.contains("cni.dev/valid-attachments"),
                "{bad}: {}",
                e.msg
            );
        }
        assert!(
            parse("{}")
                .unwrap_err()
                .msg
                .contains("every pod on the node would count as stale")
        );
    }

    #[test]
    fn flannels_example_delegate_byte_for_byte() {
        let delegate = render(
            r#"{"name":"cni-flannel","type":"weft-cni","subnetFile":"/x/subnet.env","dataDir":"/x/data"}"#,
            SUBNET_ENV_V4,
        )
        .unwrap();
        // The example in flannel-compat.md §8 (flannel's own test expectation).
        let example: Value = serde_json::from_str(
            r#"{"ipMasq":false,"ipam":{"routes":[{"dst":"10.1.0.0/16"}],"ranges":[[{"subnet":"10.1.17.0/24"}]],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#,
        )
        .unwrap();
        assert_eq!(Value::Object(delegate.clone()), example);
        // And the bytes Go's json.Marshal writes for that map (keys sorted).
        assert_eq!(
            serde_json::to_string(&delegate).unwrap(),
            r#"{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#
        );
    }

    #[test]
    fn defaults_and_flannels_field_names() {
        let c = conf(r#"{"name":"cbr0","type":"weft-cni"}"#);
        assert_eq!(c.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cni/flannel"));
        assert_eq!(c.delegate, None);
        // Go's decoder matches keys case-insensitively.
        let c = conf(r#"{"name":"n","SubnetFile":"/a","DATADIR":"/b"}"#);
        assert_eq!(c.subnet_file, PathBuf::from("/a"));
        assert_eq!(c.data_dir, PathBuf::from("/b"));
        let err = NetConf::parse(&decode(br#"{"name":"n","delegate":[1]}"#).unwrap()).unwrap_err();
        assert_eq!(err.code, code::INVALID_NETWORK_CONFIG);
        assert!(
            err.msg.contains("\"delegate\" must be a JSON object"),
            "{}",
            err.msg
        );
    }

    #[test]
    fn shipped_conflist_entry_with_ipmasq_off_and_cni_version() {
        let delegate = render(
            r#"{"name":"cbr0","cniVersion":"0.3.1","type":"weft-cni","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        assert_eq!(
            serde_json::to_string(&delegate).unwrap(),
            r#"{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":true,"ipam":{"ranges":[[{"subnet":"10.244.3.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#
        );
    }

    #[test]
    fn given_ipam_keeps_its_keys_and_routes() {
        // flannel's "input IPAM is provided" case: unknown keys stay, routes are kept then the network appended.
        let delegate = render(
            r#"{"name":"cni-flannel","type":"weft-cni","ipam":{"type":"my-ipam","unknown-param":"unknown-value","dataDir":"/tmp/ipam",
               "routes":[{"dst":"10.96.0.0/12"},{"dst":"192.168.244.0/24","gw":"10.1.17.20"}]}}"#,
            SUBNET_ENV_V4,
        )
        .unwrap();
        let expected: Value = serde_json::from_str(
            r#"{"type":"my-ipam","unknown-param":"unknown-value","dataDir":"/tmp/ipam",
                "routes":[{"dst":"10.96.0.0/12"},{"dst":"192.168.244.0/24","gw":"10.1.17.20"},{"dst":"10.1.0.0/16"}],
                "ranges":[[{"subnet":"10.1.17.0/24"}]]}"#,
        )
        .unwrap();
        assert_eq!(delegate["ipam"], expected);
        // Without a type, host-local.
        let delegate = render(r#"{"name":"n","ipam":{"routes":[]}}"#, SUBNET_ENV_V4).unwrap();
        assert_eq!(delegate["ipam"]["type"], "host-local");
        // A given ranges is replaced by the node's subnet.
        let delegate = render(
            r#"{"name":"n","ipam":{"ranges":[[{"subnet":"1.2.3.0/24"}]]}}"#,
            SUBNET_ENV_V4,
        )
        .unwrap();
        assert_eq!(
            delegate["ipam"]["ranges"],
            serde_json::json!([[{"subnet": "10.1.17.0/24"}]])
        );
        let err = render(
            r#"{"name":"n","ipam":{"routes":[{"gw":"1.2.3.4"}]}}"#,
            SUBNET_ENV_V4,
        )
        .unwrap_err();
        assert!(
            err.msg.contains("failed to read IPAM routes"),
            "{}",
            err.msg
        );
    }

    #[test]
    fn dual_stack_ranges_and_routes() {
        let delegate = render(
            r#"{"name":"cni-flannel"}"#,
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert_eq!(
            delegate["ipam"],
            serde_json::json!({
                "routes": [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}],
                "ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]],
                "type": "host-local"
            })
        );
    }

    /// flannel's fixtures `onlyIpv6FlannelSubnetEnv` and `dualStackFlannelSubnetEnv`
    /// (`flannel_linux_test.go`).
    const SUBNET_ENV_V6: &str = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    const SUBNET_ENV_DUAL: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

    /// flannel's "CNI lifecycle" expectations for the IPv6-only and dual-stack
    /// subnet.env, and the bytes Go's `json.Marshal` saves for them.
    #[test]
    fn flannels_ipv6_only_and_dual_stack_delegates_byte_for_byte() {
        let plugin = r#"{"name":"cni-flannel","type":"weft-cni","subnetFile":"/x/subnet.env","dataDir":"/x/data"}"#;
        let v6 = render(plugin, SUBNET_ENV_V6).unwrap();
        let expected: Value = serde_json::from_str(
            r#"{"ipMasq":false,"ipam":{"routes":[{"dst":"fc00::/48"}],"ranges":[[{"subnet":"fc00::/64"}]],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#,
        )
        .unwrap();
        assert_eq!(Value::Object(v6.clone()), expected);
        assert_eq!(
            serde_json::to_string(&v6).unwrap(),
            r#"{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"fc00::/64"}]],"routes":[{"dst":"fc00::/48"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#
        );
        let dual = render(plugin, SUBNET_ENV_DUAL).unwrap();
        let expected: Value = serde_json::from_str(
            r#"{"ipMasq":false,"ipam":{"routes":[{"dst":"10.1.0.0/16"},{"dst":"fc00::/48"}],"ranges":[[{"subnet":"10.1.17.0/24"}],[{"subnet":"fc00::/64"}]],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#,
        )
        .unwrap();
        assert_eq!(Value::Object(dual.clone()), expected);
        assert_eq!(
            serde_json::to_string(&dual).unwrap(),
            r#"{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}],[{"subnet":"fc00::/64"}]],"routes":[{"dst":"10.1.0.0/16"},{"dst":"fc00::/48"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#
        );
    }

    /// flannel's `getDelegateIPAM` "input IPAM is provided" cases for IPv6
    /// only and dual stack: other keys kept, the input routes first, then one
    /// route per network (IPv4 before IPv6), `ranges` replaced.
    #[test]
    fn given_ipam_with_ipv6_only_and_dual_stack() {
        let plugin = r#"{"name":"cni-flannel","type":"weft-cni","ipam":{"type":"my-ipam","unknown-param":"unknown-value",
            "routes":[{"dst":"10.96.0.0/12"},{"dst":"192.168.244.0/24","gw":"10.1.17.20"}],"ranges":[[{"subnet":"1.2.3.0/24"}]]}}"#;
        let v6 = render(plugin, SUBNET_ENV_V6).unwrap();
        assert_eq!(
            v6["ipam"],
            serde_json::json!({
                "type": "my-ipam", "unknown-param": "unknown-value",
                "routes": [{"dst": "10.96.0.0/12"}, {"dst": "192.168.244.0/24", "gw": "10.1.17.20"}, {"dst": "fc00::/48"}],
                "ranges": [[{"subnet": "fc00::/64"}]]
            })
        );
        let dual = render(plugin, SUBNET_ENV_DUAL).unwrap();
        assert_eq!(
            dual["ipam"],
            serde_json::json!({
                "type": "my-ipam", "unknown-param": "unknown-value",
                "routes": [{"dst": "10.96.0.0/12"}, {"dst": "192.168.244.0/24", "gw": "10.1.17.20"},
                           {"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}],
                "ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]]
            })
        );
        // An IPv6 route given in the input is kept as it is.
        let with_v6_route = render(
            r#"{"name":"n","ipam":{"routes":[{"dst":"fd99::/64","gw":"fc00::5"}]}}"#,
            SUBNET_ENV_DUAL,
        )
        .unwrap();
        assert_eq!(
            with_v6_route["ipam"]["routes"],
            serde_json::json!([{"dst": "fd99::/64", "gw": "fc00::5"}, {"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}])
        );
    }

    #[test]
    fn delegate_overrides_and_refusals() {
        // Explicit values win over flannel's defaults; runtimeConfig is copied in.
        let delegate = render(
            r#"{"name":"n","cniVersion":"1.0.0","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]},
                "delegate":{"type":"bridge","ipMasq":true,"mtu":1400,"isGateway":false,"bridge":"weft0","cniVersion":"0.3.0"}}"#,
            SUBNET_ENV_V4,
        )
        .unwrap();
        assert_eq!(delegate["ipMasq"], true);
        assert_eq!(delegate["mtu"], 1400);
        assert_eq!(delegate["isGateway"], false);
        assert_eq!(delegate["bridge"], "weft0");
        assert_eq!(
            delegate["cniVersion"], "1.0.0",
            "the network's version wins"
        );
        assert_eq!(
            delegate["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        // A non-bridge delegate gets no isGateway.
        let delegate = render(
            r#"{"name":"n","delegate":{"type":"ipvlan"}}"#,
            SUBNET_ENV_V4,
        )
        .unwrap();
        assert!(!delegate.contains_key("isGateway"));
        // flannel's refusals, with flannel's messages.
        for (conf_text, msg) in [
            (
                r#"{"name":"n","delegate":{"name":"x"}}"#,
                "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
            ),
            (
                r#"{"name":"n","delegate":{"ipam":{}}}"#,
                "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel",
            ),
            (
                r#"{"name":"n","delegate":{"type":7}}"#,
                "'delegate' dictionary, if present, must have (string) 'type' field",
            ),
        ] {
            let err = render(conf_text, SUBNET_ENV_V4).unwrap_err();
            assert_eq!(
                (err.code, err.msg.as_str()),
                (code::INVALID_NETWORK_CONFIG, msg)
            );
        }
    }

    #[test]
    fn decoding_and_names() {
        assert_eq!(
            decode(b"{not json").unwrap_err().code,
            code::DECODING_FAILURE
        );
        assert_eq!(decode(b"[1]").unwrap_err().code, code::DECODING_FAILURE);
        let obj = decode(br#"{"cniVersion":"1.0.0"}"#).unwrap();
        assert_eq!(validate_name(&obj).unwrap_err().msg, "missing network name");
        let obj = decode(br#"{"name":"bad name"}"#).unwrap();
        assert_eq!(
            validate_name(&obj).unwrap_err().code,
            code::INVALID_NETWORK_CONFIG
        );
        validate_name(&decode(br#"{"name":"cbr0"}"#).unwrap()).unwrap();
    }
}
