//! Running a delegate plugin (CNI spec "Section 4: Plugin Delegation"): find
//! the executable named by the delegate's `type` in `CNI_PATH`, run it with
//! this invocation's `CNI_*` environment (only `CNI_COMMAND` may differ) and
//! the delegate configuration on stdin, and read its result or error from
//! stdout.

use super::spec::{CniError, Command, code};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

/// The first regular file called `plugin` in the `CNI_PATH` directories.
pub fn find_plugin(plugin: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
        return Err(CniError::new(
            code::INVALID_NETWORK_CONFIG,
            format!("invalid plugin type {plugin:?}: it must be a file name in CNI_PATH"),
        ));
    }
    path.iter()
        .map(|dir| dir.join(plugin))
        .find(|candidate| candidate.metadata().is_ok_and(|m| m.is_file()))
        .ok_or_else(|| {
            let dirs: Vec<String> = path.iter().map(|d| d.display().to_string()).collect();
            CniError::new(
                code::INVALID_NETWORK_CONFIG,
                format!("failed to find plugin {plugin:?} in path [{}]", dirs.join(" ")),
            )
            .with_details(
                "install the CNI reference plugins on this node (Debian: containernetworking-plugins in /usr/lib/cni; \
                 upstream release: /opt/cni/bin) or add their directory to the runtime's CNI bin dirs (CNI_PATH)",
            )
        })
}

/// Runs `plugin` for `command` with `config` on stdin; returns its stdout on
/// success, or its error result (or, if it printed none, its stderr) on failure.
pub fn exec(plugin: &Path, command: Command, config: &[u8]) -> Result<Vec<u8>, CniError> {
    exec_with(plugin, command, config, None)
}

/// Like [`exec`], for another attachment than this invocation's: GC tearing
/// down a stale one runs the delegate's DEL with that attachment's container
/// ID and interface name, and no `CNI_NETNS` (the spec lets GC assume the
/// namespace is gone; the reference plugins then release only what lies
/// outside it, such as the IPAM reservation).
pub fn exec_for(
    plugin: &Path,
    command: Command,
    config: &[u8],
    container_id: &str,
    ifname: &str,
) -> Result<Vec<u8>, CniError> {
    exec_with(plugin, command, config, Some((container_id, ifname)))
}

/// Whether `plugin` lists `version` in its VERSION result.
pub fn speaks(plugin: &Path, version: &str) -> Result<bool, CniError> {
    let out = exec(
        plugin,
        Command::Version,
        format!(r#"{{"cniVersion":"{version}"}}"#).as_bytes(),
    )?;
    let name = plugin.display();
    let reply: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            format!("the VERSION result of {name} is not JSON: {e}"),
        )
    })?;
    let Some(versions) = reply["supportedVersions"].as_array() else {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            format!("the VERSION result of {name} has no \"supportedVersions\" list: {reply}"),
        ));
    };
    Ok(versions.iter().any(|v| v.as_str() == Some(version)))
}

fn exec_with(
    plugin: &Path,
    command: Command,
    config: &[u8],
    attachment: Option<(&str, &str)>,
) -> Result<Vec<u8>, CniError> {
    let name = plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut process = Process::new(plugin);
    process.env("CNI_COMMAND", command.as_str());
    if let Some((container_id, ifname)) = attachment {
        process
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_IFNAME", ifname)
            .env_remove("CNI_NETNS");
    }
    let mut child = process
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                format!("cannot run the {name} plugin ({}): {e}", plugin.display()),
            )
        })?;
    // Write stdin from a thread so a plugin that answers before reading all of
    // it cannot deadlock us on a full pipe.
    let writer = child.stdin.take().map(|mut stdin| {
        let config = config.to_vec();
        std::thread::spawn(move || stdin.write_all(&config))
    });
    let output = child.wait_with_output().map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("waiting for the {name} plugin failed: {e}"),
        )
    })?;
    if let Some(writer) = writer {
        // A plugin may legitimately exit without reading stdin (EPIPE); its exit status says what happened.
        let _ = writer.join();
    }
    if output.status.success() {
        return Ok(output.stdout);
    }
    Err(plugin_error(
        &name,
        command,
        &output.stdout,
        &output.stderr,
        output.status.to_string(),
    ))
}

/// The delegate's error result, keeping its code; or a generic one from stderr.
fn plugin_error(
    name: &str,
    command: Command,
    stdout: &[u8],
    stderr: &[u8],
    status: String,
) -> CniError {
    #[derive(serde::Deserialize)]
    struct ErrorResult {
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    match serde_json::from_slice::<ErrorResult>(stdout) {
        Ok(e) if !e.msg.is_empty() => CniError::new(
            e.code,
            format!("delegate plugin {name} failed ({command}): {}", e.msg),
        )
        .with_details(e.details),
        _ => {
            let stderr = String::from_utf8_lossy(stderr);
            CniError::new(
                999,
                format!(
                    "delegate plugin {name} failed ({command}, {status}): {}",
                    stderr.trim()
                ),
            )
        }
    }
}

/// Writes an executable script for a test to run as a plugin. `install`
/// writes the file in its own process: had this (multi-threaded) test process
/// written it, a test forking in parallel could inherit the write descriptor
/// until its child execs, and running the script meanwhile fails with "Text
/// file busy" (ETXTBSY, seen in CI).
#[cfg(test)]
pub(crate) fn write_test_plugin(path: &Path, script: &str) {
    let source = path.with_extension("src");
    std::fs::write(&source, script).expect("write the plugin script");
    let status = std::process::Command::new("install")
        .args(["-m", "0755"])
        .arg(&source)
        .arg(path)
        .status()
        .expect("run install(1)");
    assert!(status.success(), "install {}", path.display());
    std::fs::remove_file(&source).expect("remove the script source");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        write_test_plugin(&path, &format!("#!/bin/sh\n{body}\n"));
        path
    }

    #[test]
    fn finds_the_first_match_in_path_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir(a.path().join("bridge")).unwrap(); // a directory is not a plugin
        let found = script(b.path(), "bridge", "true");
        let path = vec![a.path().to_owned(), b.path().to_owned()];
        assert_eq!(find_plugin("bridge", &path).unwrap(), found);
        let err = find_plugin("ptp", &path).unwrap_err();
        assert_eq!(err.code, code::INVALID_NETWORK_CONFIG);
        assert!(
            err.msg
                .starts_with("failed to find plugin \"ptp\" in path ["),
            "{}",
            err.msg
        );
        assert!(err.details.contains("containernetworking-plugins"));
        assert!(find_plugin("../bin/sh", &path).is_err());
    }

    #[test]
    fn passes_command_and_stdin_and_returns_stdout() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "echo",
            r#"printf '{"cmd":"%s","in":' "$CNI_COMMAND"; cat; printf '}'"#,
        );
        let out = exec(&plugin, Command::Del, br#"{"a":1}"#).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"cmd":"DEL","in":{"a":1}}"#
        );
    }

    #[test]
    fn another_attachment_and_version_support() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "env",
            r#"cat >/dev/null; printf '%s %s %s netns=%s' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_IFNAME" "${CNI_NETNS:-none}""#,
        );
        let out = exec_for(&plugin, Command::Del, b"{}", "c9", "net1").unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "DEL c9 net1 netns=none");
        let plugin = script(
            dir.path(),
            "old",
            r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","supportedVersions":["0.3.1","1.0.0"]}'"#,
        );
        assert!(speaks(&plugin, "1.0.0").unwrap());
        assert!(!speaks(&plugin, "1.1.0").unwrap());
        let plugin = script(dir.path(), "mute", "cat >/dev/null; echo '{}'");
        assert_eq!(
            speaks(&plugin, "1.1.0").unwrap_err().code,
            code::DECODING_FAILURE
        );
    }

    #[test]
    fn keeps_the_delegates_error_code() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "bridge",
            r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"d"}'; exit 1"#,
        );
        let err = exec(&plugin, Command::Add, b"{}").unwrap_err();
        assert_eq!(err.code, 11);
        assert_eq!(err.msg, "delegate plugin bridge failed (ADD): busy");
        assert_eq!(err.details, "d");
        let plugin = script(dir.path(), "broken", "echo oops >&2; exit 3");
        let err = exec(&plugin, Command::Add, b"{}").unwrap_err();
        assert_eq!(err.code, 999);
        assert!(err.msg.contains("oops"), "{}", err.msg);
    }
}
