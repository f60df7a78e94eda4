//! The manifests in `deploy/` parse into k8s-openapi types (strictly: every
//! field must survive a round trip, so a misspelt key fails) and reference
//! each other correctly; the DaemonSet's weftd flags are ones weftd takes.
//!
//! YAML is read with serde-saphyr, the YAML crate kube-rs itself uses (for
//! kubeconfig files): maintained, pure Rust, serde-native; serde_yaml is
//! archived and serde_yml unmaintained.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every document of every YAML file in deploy/, with its file name.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/");
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for doc in parsed.into_iter().filter(|d| !d.is_null()) {
            docs.push((file.display().to_string(), doc));
        }
    }
    docs
}

/// Deserializes into `T` and insists that nothing was dropped or changed.
fn typed<T: DeserializeOwned + serde::Serialize>(file: &str, doc: &Value) -> T {
    let object: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!(
            "{file}: {} is not a valid {}: {e}",
            doc["metadata"]["name"], doc["kind"]
        )
    });
    let back = serde_json::to_value(&object).unwrap();
    assert_eq!(
        &back, doc,
        "{file}: {} {} has fields Kubernetes does not know (or of the wrong type)",
        doc["kind"], doc["metadata"]["name"]
    );
    object
}

#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    accounts: Vec<ServiceAccount>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

fn manifests() -> Manifests {
    let mut m = Manifests::default();
    for (file, doc) in documents() {
        match doc["kind"].as_str() {
            Some("Namespace") => m.namespaces.push(typed(&file, &doc)),
            Some("ServiceAccount") => m.accounts.push(typed(&file, &doc)),
            Some("ClusterRole") => m.roles.push(typed(&file, &doc)),
            Some("ClusterRoleBinding") => m.bindings.push(typed(&file, &doc)),
            Some("ConfigMap") => m.config_maps.push(typed(&file, &doc)),
            Some("DaemonSet") => m.daemon_sets.push(typed(&file, &doc)),
            other => panic!("{file}: unexpected kind {other:?}"),
        }
    }
    m
}

fn name<
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    o: &T,
) -> &str {
    o.metadata().name.as_deref().unwrap_or_default()
}

fn only<'a, T>(items: &'a [T], what: &str) -> &'a T {
    assert_eq!(items.len(), 1, "want exactly one {what}");
    &items[0]
}

fn weftd(ds: &DaemonSet) -> &Container {
    let spec = ds.spec.template.spec.as_ref().unwrap();
    spec.containers
        .iter()
        .find(|c| c.command.as_ref().is_some_and(|c| c[0].ends_with("/weftd")))
        .expect("a container running weftd")
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&format!("{name}="))
            .map(str::to_owned)
            .or_else(|| (a == name).then(|| args.get(i + 1).cloned().unwrap_or_default()))
    })
}

#[test]
fn every_manifest_is_a_valid_kubernetes_object() {
    let m = manifests();
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.daemon_sets.len(), 1);
}

#[test]
fn service_account_binding_and_role_match_and_grant_flannels_rbac() {
    let m = manifests();
    let ns = name(only(&m.namespaces, "Namespace")).to_owned();
    let sa = only(&m.accounts, "ServiceAccount");
    let role = only(&m.roles, "ClusterRole");
    let binding = only(&m.bindings, "ClusterRoleBinding");
    let ds = only(&m.daemon_sets, "DaemonSet");
    assert_eq!(sa.metadata.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(binding.role_ref.name, name(role));
    let subjects = binding.subjects.as_ref().unwrap();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && s.name == name(sa)
            && s.namespace.as_deref() == Some(ns.as_str())),
        "the binding names the service account"
    );
    let pod = ds.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(name(sa)));
    assert_eq!(ds.metadata.namespace.as_deref(), Some(ns.as_str()));
    for cm in &m.config_maps {
        assert_eq!(cm.metadata.namespace.as_deref(), Some(ns.as_str()));
    }

    // Exactly flannel's grants (flannel-compat.md §3): what the fake API
    // server in tests/support enforces.
    let mut granted = BTreeSet::new();
    for rule in role.rules.as_ref().unwrap() {
        assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
        for resource in rule.resources.as_ref().unwrap() {
            for verb in &rule.verbs {
                granted.insert(format!("{resource}:{verb}"));
            }
        }
    }
    let want: BTreeSet<String> = [
        "pods:get",
        "nodes:get",
        "nodes:list",
        "nodes:watch",
        "nodes/status:patch",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(granted, want);
}

#[test]
fn daemonset_mounts_probes_flags_and_placement() {
    let m = manifests();
    let ds = only(&m.daemon_sets, "DaemonSet");
    let spec = &ds.spec;
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(labels.get(k), Some(v), "the selector selects the pods");
    }
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_ref().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.effect.as_deref() == Some("NoSchedule")
                && t.key.is_none())
    );

    // Every mount names a volume, every volume is mounted.
    let volumes: BTreeMap<&str, _> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let containers: Vec<&Container> = pod
        .init_containers
        .iter()
        .flatten()
        .chain(pod.containers.iter())
        .collect();
    let mut used = BTreeSet::new();
    for c in &containers {
        for mount in c.volume_mounts.iter().flatten() {
            assert!(
                volumes.contains_key(mount.name.as_str()),
                "container {} mounts {:?}, which is not a volume",
                c.name,
                mount.name
            );
            used.insert(mount.name.as_str());
        }
    }
    assert_eq!(used, volumes.keys().copied().collect(), "unused volumes");
    let mount_of = |c: &Container, path: &str| -> Option<String> {
        let m = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path.trim_end_matches('/') == path.trim_end_matches('/'))?;
        Some(m.name.clone())
    };
    let host_path = |volume: &str| -> Option<(String, Option<String>)> {
        let hp = volumes[volume].host_path.as_ref()?;
        Some((hp.path.clone(), hp.type_.clone()))
    };

    // weftd: flags it takes, probes on --healthz-port, the host paths it uses.
    let weftd = weftd(ds);
    let args = weftd.args.clone().unwrap_or_default();
    let cli = weft::agent::cli::Cli::try_parse_from(
        std::iter::once("weftd".to_owned()).chain(args.iter().cloned()),
    )
    .unwrap_or_else(|e| panic!("weftd refuses the DaemonSet's flags {args:?}: {e}"));
    assert!(cli.run.kube_subnet_mgr);
    assert!(cli.run.ip_masq);
    let healthz = cli.run.healthz_port;
    assert_ne!(healthz, 0, "--healthz-port must be set for the probes");
    let port_of = |p: &IntOrString| -> i32 {
        match p {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => {
                weftd
                    .ports
                    .iter()
                    .flatten()
                    .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                    .unwrap_or_else(|| panic!("probe port {name:?} is not a container port"))
                    .container_port
            }
        }
    };
    for (probe, path) in [
        (&weftd.liveness_probe, "/healthz"),
        (&weftd.readiness_probe, "/readyz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            port_of(&get.port),
            i32::from(healthz),
            "{path} probes --healthz-port"
        );
    }
    let env = weftd.env.as_ref().unwrap();
    let node_name = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    assert_eq!(
        node_name
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );
    let caps = weftd
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap()
        .add
        .clone()
        .unwrap();
    for cap in ["NET_ADMIN", "NET_RAW"] {
        assert!(caps.iter().any(|c| c == cap), "{cap}");
    }
    let subnet_dir = cli
        .run
        .subnet_file
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let run = mount_of(weftd, &subnet_dir).expect("subnet.env's directory is mounted");
    assert_eq!(host_path(&run).unwrap().0, subnet_dir);
    let tun = mount_of(weftd, "/dev/net/tun").expect("/dev/net/tun is mounted");
    assert_eq!(
        host_path(&tun).unwrap(),
        ("/dev/net/tun".to_owned(), Some("CharDevice".to_owned()))
    );
    // --ip-masq runs iptables: the host's xtables lock is shared, as in flannel's manifest.
    let lock = mount_of(weftd, "/run/xtables.lock").expect("/run/xtables.lock is mounted");
    assert_eq!(
        host_path(&lock).unwrap(),
        (
            "/run/xtables.lock".to_owned(),
            Some("FileOrCreate".to_owned())
        )
    );

    // net-conf.json reaches weftd's --net-config-path from the ConfigMap.
    let conf = cli.run.net_config_path.clone();
    let conf_volume = mount_of(weftd, conf.parent().unwrap().to_str().unwrap())
        .expect("the net-conf directory is mounted");
    let cm_name = volumes[conf_volume.as_str()]
        .config_map
        .as_ref()
        .expect("from the ConfigMap")
        .name
        .clone();
    let cm = m
        .config_maps
        .iter()
        .find(|c| name(*c) == cm_name)
        .expect("the ConfigMap the volume names");
    let data = cm.data.as_ref().unwrap();
    let net_conf = &data[conf.file_name().unwrap().to_str().unwrap()];
    let parsed = weft::core::config::NetConfig::parse(net_conf).expect("weft parses net-conf.json");
    parsed.require_vxlan().unwrap();
    assert!(parsed.network.is_some());
    // What flannel's CheckNetworkConfig would say too (etcd users copy it).
    weft::core::config::NetConfig::parse_and_check(net_conf).unwrap();

    // The install step: weft-cni installs itself and the ConfigMap's conflist.
    let install = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| {
            c.command
                .as_ref()
                .is_some_and(|c| c[0].ends_with("/weft-cni"))
        })
        .expect("an init container running weft-cni install");
    let iargs = install.args.clone().unwrap();
    assert_eq!(iargs[0], "install");
    let conflist = PathBuf::from(flag(&iargs, "--conflist").unwrap());
    let bin_dir = flag(&iargs, "--bin-dir").unwrap();
    let conf_dir = flag(&iargs, "--conf-dir").unwrap();
    assert!(flag(&iargs, "--name").unwrap().ends_with(".conflist"));
    for (dir, host) in [(&bin_dir, "/opt/cni/bin"), (&conf_dir, "/etc/cni/net.d")] {
        let v = mount_of(install, dir).unwrap_or_else(|| panic!("{dir} is mounted"));
        assert_eq!(host_path(&v).unwrap().0, host);
    }
    let v = mount_of(install, conflist.parent().unwrap().to_str().unwrap()).unwrap();
    assert_eq!(
        volumes[v.as_str()].config_map.as_ref().unwrap().name,
        cm_name
    );
    let cni: Value =
        serde_json::from_str(&data[conflist.file_name().unwrap().to_str().unwrap()]).unwrap();
    let plugins = cni["plugins"].as_array().unwrap();
    assert_eq!(plugins[0]["type"], "weft-cni");
    assert_eq!(plugins[0]["delegate"]["hairpinMode"], true);
    assert_eq!(plugins[0]["delegate"]["isDefaultGateway"], true);
    assert_eq!(plugins[1]["type"], "portmap");
    assert_eq!(plugins[1]["capabilities"]["portMappings"], true);
    assert_eq!(cni["cniVersion"], "0.3.1");

    // Every container runs the image the Containerfile builds, from /opt/bin.
    let containerfile = std::fs::read_to_string(deploy_dir().join("Containerfile")).unwrap();
    // (netns-tests/container.rs runs the built image itself.)
    for bin in ["weftd", "weft-cni"] {
        assert!(
            containerfile.contains(&format!("--bin {bin}"))
                && containerfile.contains(&format!("/out/opt/bin/{bin}")),
            "{bin} built into /opt/bin"
        );
    }
    let image = weftd.image.clone().unwrap();
    for c in &containers {
        assert_eq!(c.image.as_ref(), Some(&image), "{}", c.name);
    }
}
