//! The Kubernetes lease store (flannel's `--kube-subnet-mgr`): a node's
//! subnet is its `spec.podCIDR`, and every node publishes its VTEP in
//! flannel's node annotations, so weft and flannel nodes share one cluster.
//!
//! One resource: the API server, through kube-rs's client. What it does, in
//! flannel's order: find this node's name (`NODE_NAME`, else the pod's
//! `spec.nodeName`); read `net-conf.json` from disk; give back the VtepMAC and
//! `node-public-ip` the node carries; acquire = check the pod CIDR and patch
//! the annotations through `nodes/status` only when they differ; then watch
//! every node with kube-runtime's watcher ([`nodes::NodeTable`] decides what
//! is an event); once ready, set the `NetworkUnavailable=False` condition.
//!
//! Error policy: startup errors (no node name, no pod CIDR, a pod CIDR outside
//! `Network`, an API server that stays unreachable for the poll timeout) end
//! the agent with flannel's message, so the DaemonSet restarts it. While
//! running, watch errors are logged, counted and retried with kube-runtime's
//! backoff (the last known leases stay programmed); `410 Gone` relists and
//! the relist is applied as a snapshot; nodes with unusable annotations are
//! skipped, logged once per bad state and counted.

pub mod annotations;
pub mod env;
pub mod nodes;

use super::contract::{AcquireRequest, OwnAddress, StoreUpdate, UpdateSender};
use super::error::StoreError;
use super::stats::StoreStats;
use crate::core::config::NetConfig;
use crate::core::lease::{Lease, LeaseAttrs};
use ::kube::api::{Api, Patch, PatchParams};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::runtime::WatchStreamExt;
use ::kube::runtime::watcher::{self, Event};
use ::kube::{Client, Config};
use annotations::Annotations;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use nodes::{Change, NodeTable};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};
use tracing::{debug, info, warn};

/// Who this node is: flannel reads `NODE_NAME`, else `POD_NAME` + `POD_NAMESPACE`.
#[derive(Debug, Clone, Default)]
pub struct NodeIdentity {
    /// `NODE_NAME`.
    pub node_name: Option<String>,
    /// `POD_NAME`.
    pub pod_name: Option<String>,
    /// `POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
}

impl NodeIdentity {
    /// From the process environment, as flannel does.
    pub fn from_env() -> NodeIdentity {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        NodeIdentity {
            node_name: var("NODE_NAME"),
            pod_name: var("POD_NAME"),
            pod_namespace: var("POD_NAMESPACE"),
        }
    }
}

/// How long to wait for the API server at startup (flannel: every 3 s for 30 s).
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// How often to try.
    pub poll: Duration,
    /// How long to try before giving up.
    pub timeout: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Patience {
            poll: Duration::from_secs(3),
            timeout: Duration::from_secs(30),
        }
    }
}

/// What the flags say about Kubernetes mode.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// `--kube-api-url`.
    pub api_url: Option<String>,
    /// `--kubeconfig-file`.
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-annotation-prefix`.
    pub annotation_prefix: String,
    /// `--net-config-path`.
    pub net_config_path: PathBuf,
    /// `--set-node-network-unavailable`.
    pub set_node_network_unavailable: bool,
    /// Who this node is.
    pub identity: NodeIdentity,
    /// How long to wait for the API server at startup.
    pub patience: Patience,
}

/// The Kubernetes store.
#[derive(Debug)]
pub struct KubeStore {
    nodes: Api<Node>,
    node_name: String,
    keys: Annotations,
    net_config_path: PathBuf,
    set_node_network_unavailable: bool,
    endpoint: String,
    patience: Patience,
    stats: Arc<StoreStats>,
    /// `EnableIPv6` of the config acquired with: the watch then reads the
    /// nodes' IPv6 pod CIDRs and annotations too.
    enable_ipv6: AtomicBool,
    /// `EnableIPv4` of the config acquired with: false (IPv6-only), the
    /// watch reads only the nodes' IPv6 halves.
    enable_ipv4: AtomicBool,
}

/// A kube-rs error in a line an operator can read.
fn describe_error(e: &::kube::Error) -> String {
    match e {
        ::kube::Error::Api(status) => {
            format!(
                "{} ({}, HTTP {})",
                status.message, status.reason, status.code
            )
        }
        other => other.to_string(),
    }
}

fn is_not_found(e: &::kube::Error) -> bool {
    matches!(e, ::kube::Error::Api(s) if s.code == 404)
}

/// Builds the client configuration as flannel's `BuildConfigFromFlags` does:
/// the kubeconfig file (its server replaced by `--kube-api-url` if given), or
/// just the URL, or the in-cluster service account, falling back to the
/// default kubeconfig (`KUBECONFIG`, `~/.kube/config`).
async fn client_config(opts: &KubeOptions) -> Result<Config, String> {
    let url = opts
        .api_url
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<http::Uri>()
                .map_err(|e| format!("--kube-api-url {u:?} is not a URL: {e}"))
        })
        .transpose()?;
    if let Some(path) = &opts.kubeconfig {
        let kubeconfig = Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(url) = url {
            config.cluster_url = url;
        }
        return Ok(config);
    }
    if let Some(url) = url {
        return Ok(Config::new(url));
    }
    match Config::incluster() {
        Ok(config) => Ok(config),
        Err(in_cluster) => {
            warn!(error = %in_cluster, "error creating the in-cluster config, falling back to the default kubeconfig");
            Config::from_kubeconfig(&KubeConfigOptions::default())
                .await
                .map_err(|e| {
                    format!(
                        "not running in a pod ({in_cluster}) and no usable kubeconfig ({e}); pass --kubeconfig-file or --kube-api-url"
                    )
                })
        }
    }
}

impl KubeStore {
    /// Connects (lazily: kube-rs dials on the first request), finds the node name.
    pub async fn open(opts: KubeOptions, stats: Arc<StoreStats>) -> Result<KubeStore, StoreError> {
        let keys =
            Annotations::new(&opts.annotation_prefix).map_err(StoreError::AnnotationPrefix)?;
        let config = client_config(&opts)
            .await
            .map_err(|reason| StoreError::KubeConfig { reason })?;
        let endpoint = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(StoreError::KubeClient)?;
        let node_name = resolve_node_name(&client, &opts.identity).await?;
        info!(node = %node_name, api = %endpoint, prefix = %keys.prefix, "Kubernetes subnet manager");
        Ok(KubeStore {
            nodes: Api::all(client),
            node_name,
            keys,
            net_config_path: opts.net_config_path,
            set_node_network_unavailable: opts.set_node_network_unavailable,
            endpoint,
            patience: opts.patience,
            stats,
            enable_ipv6: AtomicBool::new(false),
            enable_ipv4: AtomicBool::new(true),
        })
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The API server's URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `net-conf.json` parsed as flannel's kube manager does (`ParseConfig`,
    /// without `CheckNetworkConfig`: subnets come from the pod CIDRs).
    pub async fn network_config(&self) -> Result<NetConfig, StoreError> {
        let path = &self.net_config_path;
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| StoreError::Io {
                what: format!("failed to read net conf {}", path.display()),
                source,
            })?;
        NetConfig::parse(&text).map_err(|error| StoreError::ConfigInvalid {
            source_name: path.display().to_string(),
            error,
        })
    }

    async fn own_node(&self) -> Result<Node, ::kube::Error> {
        self.nodes.get(&self.node_name).await
    }

    /// Runs `op` every `poll` until it succeeds or `timeout` would pass
    /// (flannel's wait loops), handing each failure and its description to `log`.
    async fn patiently<T, Fut>(
        &self,
        mut op: impl FnMut() -> Fut,
        log: impl Fn(&::kube::Error, &str),
    ) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, ::kube::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.patience.timeout;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(e) => {
                    let why = describe_error(&e);
                    if tokio::time::Instant::now() + self.patience.poll > deadline {
                        return Err(StoreError::KubeTimeout {
                            node: self.node_name.clone(),
                            reason: why,
                        });
                    }
                    log(&e, &why);
                    tokio::time::sleep(self.patience.poll).await;
                }
            }
        }
    }

    /// The own node, retried every `poll` for `timeout` (flannel waits for it
    /// to appear in its informer the same way).
    async fn own_node_patiently(&self) -> Result<Node, StoreError> {
        let node = self
            .patiently(
                || self.own_node(),
                |e, why| {
                    if is_not_found(e) {
                        info!(node = %self.node_name, "node does not exist yet; waiting for it");
                    } else {
                        warn!(node = %self.node_name, error = %why, "failed to get the node; retrying");
                    }
                },
            )
            .await?;
        self.stats.set_connected(true);
        Ok(node)
    }

    /// The `node-public-ip` annotation, which replaces `--public-ip` (flannel's
    /// `GetStoredPublicIP`; an unreachable API server is logged, not fatal).
    pub async fn stored_public_ip(&self) -> Result<Option<Ipv4Addr>, StoreError> {
        match self.own_node().await {
            Ok(node) => {
                let ip =
                    nodes::node_public_ip(&node, &self.keys).map_err(StoreError::BadAnnotation)?;
                if let Some(ip) = ip {
                    info!(public_ip = %ip, annotation = %self.keys.node_public_ip, "using the public IP from the node annotation");
                }
                Ok(ip)
            }
            Err(e) => {
                warn!(node = %self.node_name, error = %describe_error(&e), "Failed to get node for its stored public IP");
                Ok(None)
            }
        }
    }

    /// The `node-public-ipv6` annotation, which replaces `--public-ipv6`
    /// (flannel's `GetStoredPublicIP` for IPv6; an unreachable API server is
    /// logged, not fatal).
    pub async fn stored_public_ipv6(&self) -> Result<Option<Ipv6Addr>, StoreError> {
        match self.own_node().await {
            Ok(node) => {
                let ip = nodes::node_public_ipv6(&node, &self.keys)
                    .map_err(StoreError::BadAnnotation)?;
                if let Some(ip) = ip {
                    info!(public_ipv6 = %ip, annotation = %self.keys.node_public_ipv6, "using the public IPv6 from the node annotation");
                }
                Ok(ip)
            }
            Err(e) => {
                warn!(node = %self.node_name, error = %describe_error(&e), "Failed to get node for its stored public IPv6");
                Ok(None)
            }
        }
    }

    /// This node's previous lease as its annotations describe it: the VtepMAC
    /// in `backend-data` is what peers know, so a restart keeps it (and the
    /// IPv6 VtepMAC in `backend-v6-data`, with the IPv6 pod CIDR, when the
    /// node has them). In an IPv6-only network only the IPv6 half counts.
    pub async fn find_own(&self, own: OwnAddress) -> Result<Option<Lease>, StoreError> {
        let node = match self.own_node().await {
            Ok(node) => node,
            Err(e) => {
                warn!(node = %self.node_name, error = %describe_error(&e), "Failed to get node for backend data");
                return Ok(None);
            }
        };
        let public_ip = match own {
            OwnAddress::Ipv4(ip) => ip,
            // IPv6-only: the node is this node by name, so its IPv6 VtepMAC
            // is ours whatever `public-ipv6` says now (the address may have
            // changed); the lease is the IPv6 half alone, as acquire makes it.
            OwnAddress::Ipv6(ip) => {
                let Some(data) = nodes::stored_vxlan_v6_data(&node, &self.keys) else {
                    return Ok(None);
                };
                let Ok((_, Some(ipv6_subnet))) = nodes::pod_cidrs(&node) else {
                    return Ok(None);
                };
                debug!(vtep_mac = %data.vtep_mac, "found the IPv6 VtepMAC this node published before");
                let backend_type = nodes::annotation(&node, &self.keys.backend_type)
                    .unwrap_or(crate::core::lease::BACKEND_VXLAN);
                return Ok(Some(Lease {
                    subnet: crate::core::lease::NO_IPV4_SUBNET,
                    ipv6_subnet: Some(ipv6_subnet),
                    attrs: LeaseAttrs {
                        public_ip: Ipv4Addr::UNSPECIFIED,
                        public_ipv6: Some(ip),
                        backend_type: backend_type.to_owned(),
                        backend_data: None,
                        backend_v6_data: Some(data.to_json()),
                    },
                    expiration: None,
                }));
            }
        };
        let Some(data) = nodes::stored_vxlan_data(&node, &self.keys) else {
            return Ok(None);
        };
        let Ok((Some(subnet), _)) = nodes::pod_cidrs(&node) else {
            return Ok(None);
        };
        debug!(vtep_mac = %data.vtep_mac, "found the VtepMAC this node published before");
        let mut attrs = LeaseAttrs::vxlan(public_ip, &data);
        if let Some(t) = nodes::annotation(&node, &self.keys.backend_type) {
            t.clone_into(&mut attrs.backend_type);
        }
        let v6 = nodes::stored_vxlan_v6_data(&node, &self.keys);
        if let Some(data) = v6 {
            debug!(vtep_mac = %data.vtep_mac, "found the IPv6 VtepMAC this node published before");
            attrs.backend_v6_data = Some(data.to_json());
            attrs.public_ipv6 =
                nodes::annotation(&node, &self.keys.public_ipv6).and_then(|ip| ip.parse().ok());
        }
        Ok(Some(Lease {
            subnet,
            ipv6_subnet: v6.and_then(|_| nodes::pod_cidrs(&node).ok()?.1),
            attrs,
            expiration: None,
        }))
    }

    /// flannel's `AcquireLease`: the lease is the node's pod CIDR; the node's
    /// annotations are patched (through `nodes/status`) only when they differ.
    /// IPv6-only (`EnableIPv4: false`): the lease is [`NO_IPV4_SUBNET`] and
    /// the node's IPv6 pod CIDR (an IPv4 one beside it is ignored).
    ///
    /// [`NO_IPV4_SUBNET`]: crate::core::lease::NO_IPV4_SUBNET
    pub async fn acquire(
        &self,
        config: &NetConfig,
        req: &AcquireRequest,
    ) -> Result<Lease, StoreError> {
        req.check(config)?;
        let network = match (config.enable_ipv4, config.network) {
            (false, _) => None,
            (true, Some(net)) => Some(net),
            (true, None) => return Err(StoreError::NoIpv4Network),
        };
        let ipv6_network = match (config.enable_ipv6, config.ipv6_network) {
            (false, _) => None,
            (true, Some(net)) => Some(net),
            (true, None) => return Err(StoreError::NoIpv6Network),
        };
        let node = self.own_node_patiently().await?;
        let (subnet, ipv6_subnet) = match (network, ipv6_network) {
            (Some(network), ipv6_network) => {
                let subnet = nodes::own_subnet(&node, network).map_err(StoreError::OwnSubnet)?;
                let ipv6_subnet = ipv6_network
                    .map(|net| nodes::own_ipv6_subnet(&node, net))
                    .transpose()
                    .map_err(StoreError::OwnSubnet)?;
                (subnet, ipv6_subnet)
            }
            (None, Some(ipv6_network)) => {
                let ipv6_subnet = nodes::own_ipv6_only_subnet(&node, ipv6_network)
                    .map_err(StoreError::OwnSubnet)?;
                (crate::core::lease::NO_IPV4_SUBNET, Some(ipv6_subnet))
            }
            (None, None) => return Err(StoreError::NoAddressFamily),
        };
        self.enable_ipv6.store(config.enable_ipv6, Relaxed);
        self.enable_ipv4.store(config.enable_ipv4, Relaxed);
        let changes = nodes::annotation_changes(&node, &self.keys, &req.attrs)
            .map_err(StoreError::BadAnnotation)?;
        if changes.is_empty() {
            info!(node = %self.node_name, "node annotations are up to date; not patching");
        } else {
            info!(node = %self.node_name, keys = ?changes.keys().collect::<Vec<_>>(), "patching node annotations");
            self.patch_annotations(&changes).await?;
        }
        Ok(Lease {
            subnet,
            ipv6_subnet,
            attrs: req.attrs.clone(),
            expiration: None,
        })
    }

    async fn patch_annotations(
        &self,
        changes: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let patch = Patch::Strategic(serde_json::json!({ "metadata": { "annotations": changes } }));
        let params = PatchParams {
            field_manager: Some("weftd".into()),
            ..PatchParams::default()
        };
        self.patiently(
            || self.nodes.patch_status(&self.node_name, &params, &patch),
            |_, why| warn!(node = %self.node_name, error = %why, "failed to patch the node; retrying"),
        )
        .await
        .map(drop)
    }

    /// flannel's `CompleteLease`: once the node is ready, set its
    /// `NetworkUnavailable` condition to False (strategic merge by condition
    /// type, so the kubelet's conditions stay). Retried in the background.
    pub fn complete(self: &Arc<Self>, _lease: &Lease) {
        if !self.set_node_network_unavailable {
            info!("Skip setting NodeNetworkUnavailable");
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_secs(1);
            loop {
                match store.set_network_available().await {
                    Ok(()) => {
                        info!(node = %store.node_name, "set NetworkUnavailable=False");
                        return;
                    }
                    Err(e) => {
                        let why = describe_error(&e);
                        store.stats.error(&StoreError::KubeApi {
                            reason: why.clone(),
                        });
                        warn!(node = %store.node_name, error = %why, "Unable to set NetworkUnavailable to False; retrying in {delay:?}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
    }

    async fn set_network_available(&self) -> Result<(), ::kube::Error> {
        let now = Time(jiff::Timestamp::now());
        let condition = NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: "False".into(),
            reason: Some("WeftIsUp".into()),
            message: Some("weft is running on this node".into()),
            last_transition_time: Some(now.clone()),
            last_heartbeat_time: Some(now),
        };
        let patch =
            Patch::Strategic(serde_json::json!({ "status": { "conditions": [condition] } }));
        self.nodes
            .patch_status(&self.node_name, &PatchParams::default(), &patch)
            .await
            .map(|_| ())
    }

    /// Watches every node and sends the agent a snapshot per (re)list and an
    /// event per relevant change. There is no renewal in Kubernetes mode.
    pub fn spawn(self: Arc<Self>, tx: UpdateSender) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run(tx).await })
    }

    async fn run(&self, tx: UpdateSender) {
        let mut table = NodeTable::with_families(
            self.keys.clone(),
            self.enable_ipv4.load(Relaxed),
            self.enable_ipv6.load(Relaxed),
        );
        // Lists with resourceVersion=0, served from the API server's watch
        // cache, as client-go's informers (and so flannel) do: every node of a
        // cluster relists after a desync, so the cheap list matters. The
        // server ignores `limit` for such lists, and kube-rs would drop the
        // resourceVersion if a page size were set, so none is.
        let mut config = watcher::Config::default().any_semantic();
        config.page_size = None;
        let mut events = watcher::watcher(self.nodes.clone(), config)
            .default_backoff()
            .boxed();
        while let Some(item) = events.next().await {
            let step = match item {
                Ok(Event::Init) => {
                    table.init();
                    continue;
                }
                Ok(Event::InitApply(node)) => {
                    table.init_apply(&node);
                    continue;
                }
                Ok(Event::InitDone) => {
                    self.stats.set_connected(true);
                    self.stats.snapshots.fetch_add(1, Relaxed);
                    table.init_done()
                }
                Ok(Event::Apply(node)) => {
                    self.stats.set_connected(true);
                    table.apply(&node)
                }
                Ok(Event::Delete(node)) => table.delete(&node),
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    info!(reason = %status.message, "node watch expired (410 Gone); relisting all nodes");
                    continue;
                }
                Err(e) => {
                    self.stats.set_connected(false);
                    self.stats.error(&StoreError::KubeApi {
                        reason: e.to_string(),
                    });
                    warn!(error = %e, "watching nodes failed; keeping the last known leases and retrying");
                    continue;
                }
            };
            for bad in step.bad {
                self.stats.bad_record_kind(bad.error.kind());
                warn!(node = %bad.node, error = %bad.error, "skipping a node whose flannel annotations are unusable");
            }
            let update = match step.change {
                None => continue,
                Some(Change::Snapshot(leases)) => StoreUpdate::Snapshot(leases),
                Some(Change::Event(event)) => StoreUpdate::Events(vec![event]),
            };
            self.stats.event(SystemTime::now());
            if tx.send(update).await.is_err() {
                return;
            }
        }
    }
}

/// flannel's node-name lookup, with its messages.
async fn resolve_node_name(client: &Client, id: &NodeIdentity) -> Result<String, StoreError> {
    if let Some(name) = id.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Ok(name.clone());
    }
    let (Some(pod), Some(ns)) = (
        id.pod_name.as_ref().filter(|v| !v.is_empty()),
        id.pod_namespace.as_ref().filter(|v| !v.is_empty()),
    ) else {
        return Err(StoreError::NoNodeIdentity);
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let spec = pods.get(pod).await.map_err(|e| StoreError::PodSpec {
        namespace: ns.clone(),
        pod: pod.clone(),
        reason: describe_error(&e),
    })?;
    spec.spec
        .and_then(|s| s.node_name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| StoreError::NoNodeName {
            namespace: ns.clone(),
            pod: pod.clone(),
        })
}
