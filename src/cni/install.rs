//! `weft-cni install`: puts the plugin and a conflist on a node, as flannel's
//! DaemonSet does with `cp /flannel /opt/cni/bin/flannel` and `install-conf`.
//! Each file is written to a temporary name in its target directory, fsynced
//! and renamed, so a runtime never runs half a binary or loads half a conflist
//! (it loads only `.conf`, `.conflist` and `.json` files, so the temporary
//! `.<name>.<pid>.tmp` is never read).

use crate::files::write_atomic_bytes;
use std::path::{Path, PathBuf};

/// Arguments of `weft-cni install`.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// Directory the runtime looks for CNI plugins in.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Directory the runtime loads network configurations from.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The conflist to install (flannel's ConfigMap key `cni-conf.json`).
    #[arg(long, default_value = "/etc/kube-flannel/cni-conf.json")]
    pub conflist: PathBuf,
    /// File name of the installed conflist in --conf-dir.
    #[arg(long, default_value = "10-weft.conflist")]
    pub name: String,
}

/// Why installing failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The conflist cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The conflist is not a CNI configuration.
    #[error(
        "{path} is not a CNI configuration: {why}; fix the file (the ConfigMap key cni-conf.json) and rerun"
    )]
    BadConflist {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// `--name` is not a plain conflist file name.
    #[error("--name {0:?} must be a plain file name ending in .conflist, .conf or .json")]
    BadName(String),
    /// A file cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

/// What was installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Where the plugin was put.
    pub plugin: PathBuf,
    /// Where the conflist was put.
    pub conflist: PathBuf,
    /// True if some plugin in the conflist has `"type": "weft-cni"`.
    pub uses_weft: bool,
}

/// Checks the conflist is a network configuration (list) and whether it uses weft-cni.
fn check_conflist(path: &Path, text: &[u8]) -> Result<bool, InstallError> {
    let bad = |why: String| InstallError::BadConflist {
        path: path.to_owned(),
        why,
    };
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let plugins: Vec<&serde_json::Value> = match obj.get("plugins") {
        Some(serde_json::Value::Array(list)) if !list.is_empty() => list.iter().collect(),
        Some(_) => return Err(bad("\"plugins\" must be a non-empty list".into())),
        None if obj.contains_key("type") => vec![&value],
        None => return Err(bad("it has neither \"plugins\" nor \"type\"".into())),
    };
    if !obj.get("name").is_some_and(serde_json::Value::is_string) {
        return Err(bad("it has no \"name\"".into()));
    }
    Ok(plugins
        .iter()
        .any(|p| p.get("type").and_then(serde_json::Value::as_str) == Some("weft-cni")))
}

/// Copies `exe` to `<bin_dir>/weft-cni` (0755) and the conflist to `<conf_dir>/<name>` (0644).
pub fn install(args: &InstallArgs, exe: &Path) -> Result<Installed, InstallError> {
    let valid_name = !args.name.is_empty()
        && !args.name.contains('/')
        && !args.name.starts_with('.')
        && [".conflist", ".conf", ".json"]
            .iter()
            .any(|ext| args.name.ends_with(ext));
    if !valid_name {
        return Err(InstallError::BadName(args.name.clone()));
    }
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| InstallError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let conflist = read(&args.conflist)?;
    let uses_weft = check_conflist(&args.conflist, &conflist)?;
    let binary = read(exe)?;
    let plugin = args.bin_dir.join("weft-cni");
    let target = args.conf_dir.join(&args.name);
    let write = |path: &Path, bytes: &[u8], mode: u32| {
        write_atomic_bytes(path, bytes, mode).map_err(|source| InstallError::Write {
            path: path.to_owned(),
            source,
        })
    };
    // The plugin first: a conflist naming a plugin that is not there yet would fail pods.
    write(&plugin, &binary, 0o755)?;
    write(&target, &conflist, 0o644)?;
    Ok(Installed {
        plugin,
        conflist: target,
        uses_weft,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const FLANNEL_CONFLIST: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[
  {"type":"weft-cni","delegate":{"hairpinMode":true,"isDefaultGateway":true}},
  {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    fn args(dir: &Path) -> InstallArgs {
        InstallArgs {
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            conflist: dir.join("cni-conf.json"),
            name: "10-weft.conflist".into(),
        }
    }

    #[test]
    fn installs_both_files_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("exe"), b"\x7fELF fake").unwrap();
        std::fs::write(tmp.path().join("cni-conf.json"), FLANNEL_CONFLIST).unwrap();
        let a = args(tmp.path());
        let got = install(&a, &tmp.path().join("exe")).unwrap();
        assert!(got.uses_weft);
        assert_eq!(std::fs::read(&got.plugin).unwrap(), b"\x7fELF fake");
        assert_eq!(
            std::fs::read_to_string(&got.conflist).unwrap(),
            FLANNEL_CONFLIST
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&got.plugin), 0o755);
        assert_eq!(mode(&got.conflist), 0o644);
        // Reinstalling replaces; no temporary files stay.
        std::fs::write(tmp.path().join("exe"), b"new").unwrap();
        install(&a, &tmp.path().join("exe")).unwrap();
        assert_eq!(std::fs::read(&got.plugin).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&a.bin_dir).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(&a.conf_dir).unwrap().count(), 1);
    }

    #[test]
    fn refuses_a_broken_conflist_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("exe"), b"x").unwrap();
        let a = args(tmp.path());
        for (text, why) in [
            ("{\"name\":\"cbr0\",", "invalid JSON"),
            ("[]", "not a JSON object"),
            ("{\"name\":\"cbr0\"}", "neither"),
            ("{\"name\":\"cbr0\",\"plugins\":[]}", "non-empty list"),
            ("{\"plugins\":[{\"type\":\"weft-cni\"}]}", "no \"name\""),
        ] {
            std::fs::write(&a.conflist, text).unwrap();
            let err = install(&a, &tmp.path().join("exe"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
        assert!(!a.bin_dir.exists() && !a.conf_dir.exists());
        let mut bad = a.clone();
        bad.name = "../x.conflist".into();
        assert!(matches!(
            install(&bad, &tmp.path().join("exe")),
            Err(InstallError::BadName(_))
        ));
        // A single-plugin .conf is fine, and one without weft-cni is reported.
        std::fs::write(&a.conflist, r#"{"name":"n","type":"bridge"}"#).unwrap();
        assert!(!install(&a, &tmp.path().join("exe")).unwrap().uses_weft);
    }
}
