//! The CNI protocol as a plugin sees it (CNI spec 1.1.0, "Section 3: Execution
//! Protocol"): the `CNI_*` parameters, the versions this plugin speaks, the
//! error result and its well-known codes. Validation follows the reference
//! implementation (`containernetworking/cni` `pkg/skel`), so runtimes get the
//! codes and messages they already know.

use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

/// The spec versions this plugin accepts in `cniVersion`, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version this plugin implements (used for VERSION and for errors raised
/// before a configuration's own version is known).
pub const IMPLEMENTED_VERSION: &str = "1.1.0";

/// The well-known error codes (spec "Error").
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (the message names them).
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later: a transient condition the runtime should retry.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot service ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// weft-cni (plugin-specific, 100+): CHECK found the pod's subnet is no
    /// longer the node's, or its address outside it.
    pub const SUBNET_CHANGED: u32 = 100;
}

/// A CNI error result: printed as JSON on stdout with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    /// The CNI error code (11: try again later, 50: not available, ...).
    pub code: u32,
    /// What failed.
    pub msg: String,
    /// More about it.
    pub details: String,
}

impl CniError {
    /// An error with `code` and `msg`.
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The error with `details`.
    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error result JSON (spec "Error"), declared under `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct ErrorResult<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&ErrorResult {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!(r#"{{"code":{},"msg":"internal error"}}"#, self.code))
    }
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container.
    Add,
    /// Detach it.
    Del,
    /// Check it is attached.
    Check,
    /// Whether the plugin can attach containers now.
    Status,
    /// Clean up what attachments not in the runtime's valid list left behind (spec 1.1.0).
    Gc,
    /// The CNI versions supported.
    Version,
}

impl Command {
    /// The name as in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `CNI_*` parameters of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// `CNI_PATH`, split.
    pub path: Vec<PathBuf>,
}

impl Params {
    /// Reads the parameters with `getenv` (empty counts as unset, as in the
    /// reference implementation) and checks that the command has what it needs.
    pub fn from_env(getenv: impl Fn(&str) -> Option<String>) -> Result<Params, CniError> {
        let get = |name: &str| getenv(name).unwrap_or_default();
        let command = get("CNI_COMMAND");
        // Which variables each command needs (skel's table; STATUS and GC need CNI_PATH only).
        let required: &[&str] = match command.as_str() {
            "ADD" | "CHECK" => &[
                "CNI_COMMAND",
                "CNI_CONTAINERID",
                "CNI_NETNS",
                "CNI_IFNAME",
                "CNI_PATH",
            ],
            "DEL" => &["CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            "STATUS" | "GC" => &["CNI_COMMAND", "CNI_PATH"],
            _ => &["CNI_COMMAND"],
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|name| get(name).is_empty())
            .collect();
        if !missing.is_empty() {
            let mut err = CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("required env variables [{}] missing", missing.join(",")),
            );
            if missing.contains(&"CNI_COMMAND") {
                err = err.with_details(
                    "weft-cni is a CNI plugin: a container runtime runs it with CNI_COMMAND=ADD|DEL|CHECK|GC|STATUS|VERSION \
                     and the network configuration on stdin. To install it on a node run `weft-cni install --help`.",
                );
            }
            return Err(err);
        }
        let command = match command.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("unknown CNI_COMMAND: {other}"),
                )
                .with_details("weft-cni supports ADD, DEL, CHECK, GC, STATUS and VERSION"));
            }
        };
        let params = Params {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: std::env::split_paths(&get("CNI_PATH"))
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
        };
        if matches!(command, Command::Add | Command::Del | Command::Check) {
            validate_container_id(&params.container_id)?;
            validate_interface_name(&params.ifname)?;
        }
        Ok(params)
    }
}

/// A container ID is alphanumeric then `[A-Za-z0-9_.-]*` (spec "Parameters").
/// It also names a file in the data directory, so this keeps paths inside it.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            "invalid characters in containerID",
        )
        .with_details(id.to_owned()))
    }
}

/// A Linux interface name: 1..=15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
pub fn validate_interface_name(name: &str) -> Result<(), CniError> {
    let why = if name.len() > 15 {
        Some("interface name is too long")
    } else if name == "." || name == ".." {
        Some("interface name is . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("interface name contains an invalid character")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(msg) => Err(CniError::new(code::INVALID_ENVIRONMENT, msg)
            .with_details(format!("CNI_IFNAME={name:?}"))),
    }
}

/// A spec version `MAJOR.MINOR.PATCH`; `None` if it is not one.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((major, minor, patch))
}

/// Checks a configuration's `cniVersion` (absent means 0.1.0, as in the spec)
/// against [`SUPPORTED_VERSIONS`].
pub fn check_version(cni_version: &str) -> Result<(), CniError> {
    let declared = if cni_version.is_empty() {
        "0.1.0"
    } else {
        cni_version
    };
    if parse_version(declared).is_none() {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            format!("cniVersion {declared:?} is not a version (MAJOR.MINOR.PATCH)"),
        ));
    }
    if SUPPORTED_VERSIONS.contains(&declared) {
        return Ok(());
    }
    let supported: Vec<String> = SUPPORTED_VERSIONS
        .iter()
        .map(|v| format!("{v:?}"))
        .collect();
    Err(
        CniError::new(code::INCOMPATIBLE_VERSION, "incompatible CNI versions").with_details(
            format!(
                "config is {declared:?}, plugin supports [{}]; set \"cniVersion\" in the CNI configuration to one of them",
                supported.join(" ")
            ),
        ),
    )
}

/// Whether `version` is at least `min` (both valid versions).
pub fn version_at_least(version: &str, min: &str) -> bool {
    match (parse_version(version), parse_version(min)) {
        (Some(v), Some(m)) => v >= m,
        _ => false,
    }
}

/// The VERSION result.
pub fn version_result() -> String {
    serde_json::json!({
        "cniVersion": IMPLEMENTED_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn add_needs_every_parameter_and_names_the_missing_ones() {
        let err = Params::from_env(env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1")]))
            .unwrap_err();
        assert_eq!(err.code, code::INVALID_ENVIRONMENT);
        assert_eq!(
            err.msg,
            "required env variables [CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"
        );
        // DEL does not need the netns.
        let p = Params::from_env(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/a::/b"),
        ]))
        .unwrap();
        assert_eq!(p.command, Command::Del);
        assert_eq!(p.path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        // GC, like STATUS, needs only CNI_PATH.
        let err = Params::from_env(env(&[("CNI_COMMAND", "GC")])).unwrap_err();
        assert_eq!(err.msg, "required env variables [CNI_PATH] missing");
        let p = Params::from_env(env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/a")])).unwrap();
        assert_eq!(p.command, Command::Gc);
        // VERSION needs nothing else.
        assert_eq!(
            Params::from_env(env(&[("CNI_COMMAND", "VERSION")]))
                .unwrap()
                .command,
            Command::Version
        );
    }

    #[test]
    fn missing_or_unknown_command() {
        let err = Params::from_env(env(&[])).unwrap_err();
        assert_eq!(err.code, 4);
        assert_eq!(err.msg, "required env variables [CNI_COMMAND] missing");
        assert!(err.details.contains("weft-cni install"));
        let err = Params::from_env(env(&[("CNI_COMMAND", "FROB")])).unwrap_err();
        assert_eq!(
            (err.code, err.msg.as_str()),
            (4, "unknown CNI_COMMAND: FROB")
        );
    }

    #[test]
    fn container_id_and_interface_name_rules() {
        validate_container_id("abc-1.2_3").unwrap();
        for bad in ["", "../etc", "-x", "a/b", "a b"] {
            assert_eq!(validate_container_id(bad).unwrap_err().code, 4, "{bad}");
        }
        validate_interface_name("eth0").unwrap();
        for bad in ["", "a-very-long-name0", "..", "a/b", "a:b", "a b"] {
            if bad.is_empty() {
                continue; // empty is reported as a missing variable
            }
            assert_eq!(validate_interface_name(bad).unwrap_err().code, 4, "{bad}");
        }
    }

    #[test]
    fn versions() {
        for v in SUPPORTED_VERSIONS {
            check_version(v).unwrap();
        }
        let err = check_version("0.2.0").unwrap_err();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
        assert_eq!(err.msg, "incompatible CNI versions");
        assert!(
            err.details.starts_with(
                r#"config is "0.2.0", plugin supports ["0.3.0" "0.3.1" "0.4.0" "1.0.0" "1.1.0"]"#
            ),
            "{}",
            err.details
        );
        assert!(check_version("").unwrap_err().details.contains("\"0.1.0\""));
        assert_eq!(
            check_version("one").unwrap_err().code,
            code::DECODING_FAILURE
        );
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(version_at_least("1.0.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
    }

    #[test]
    fn error_and_version_json() {
        let e = CniError::new(11, "later").with_details("why");
        assert_eq!(
            e.to_json("0.3.1"),
            r#"{"cniVersion":"0.3.1","code":11,"msg":"later","details":"why"}"#
        );
        assert_eq!(
            CniError::new(7, "x").to_json("1.0.0"),
            r#"{"cniVersion":"1.0.0","code":7,"msg":"x"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&version_result()).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
    }
}
