//! Nodes as leases, without I/O: flannel's `nodeToLease`, the pod CIDR rules
//! and messages of `AcquireLease`, the annotations a node must carry, and
//! [`NodeTable`], the state machine that turns node watch events into lease
//! updates with flannel's semantics (an update counts only when backend data,
//! backend type or public IP changed; a relist is a snapshot).
//!
//! With `EnableIPv6` a lease also takes the node's first IPv6 pod CIDR and
//! the `public-ipv6` and `backend-v6-data` annotations; in an IPv6-only
//! network (`EnableIPv4: false`) it takes only those, on
//! [`NO_IPV4_SUBNET`], and `public-ip`/`backend-data` are neither read nor
//! (without IPv4 data) written, as flannel does. One deliberate
//! difference: flannel's update handler lets an unchanged IPv6 triple mask a
//! changed IPv4 one (and the reverse); here a change of either counts.

use super::annotations::Annotations;
use crate::core::lease::{Lease, LeaseAttrs, LeaseEvent, NO_IPV4_SUBNET, VxlanBackendData};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Why a node cannot be used. Messages are flannel's where flannel has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The node has no pod CIDR yet.
    #[error("node {0:?} pod cidr not assigned")]
    PodCidrNotAssigned(String),
    /// More than two pod CIDRs, or two of one family.
    #[error("node {0:?} pod cidrs should be IPv4/IPv6 only or dualstack")]
    TooManyPodCidrs(String),
    /// A pod CIDR that does not parse.
    #[error("invalid CIDR address: {0}")]
    InvalidCidr(String),
    /// Pod CIDRs without an IPv4 one.
    #[error("missing IPv4 address on n.Spec.PodCIDRs")]
    MissingIpv4PodCidr,
    /// Pod CIDRs without an IPv6 one, with `EnableIPv6` (flannel's `nodeToLease` message).
    #[error("missing IPv6 address on n.Spec.PodCIDRs")]
    MissingIpv6PodCidr,
    /// This node has no IPv6 pod CIDR, with `EnableIPv6`.
    #[error(
        "node {node:?} has no IPv6 pod CIDR (podCIDRs {cidrs:?}) but EnableIPv6 is set: give the node an IPv6 podCIDR (kube-controller-manager --cluster-cidr with an IPv6 range) or turn EnableIPv6 off"
    )]
    NoIpv6PodCidr {
        /// The node.
        node: String,
        /// Its pod CIDRs.
        cidrs: Vec<String>,
    },
    /// The IPv6 pod CIDR is outside `IPv6Network`.
    #[error(
        "subnet \"{network}\" specified in the flannel net config doesn't contain \"{cidr}\" IPv6 PodCIDR of the {node:?} node"
    )]
    Ipv6OutsideNetwork {
        /// The network.
        network: Ipv6Net,
        /// The pod CIDR.
        cidr: Ipv6Net,
        /// The node.
        node: String,
    },
    /// A public IPv6 annotation is not an IPv6 address.
    #[error("node {node:?}: annotation {key}={value:?} is not an IPv6 address")]
    BadPublicIpv6 {
        /// The node.
        node: String,
        /// The annotation.
        key: String,
        /// Its value.
        value: String,
    },
    /// Pod CIDRs of another family only.
    #[error(
        "node {node:?} has no IPv4 pod CIDR (podCIDRs {cidrs:?}) but EnableIPv4 is set (the default): give the node an IPv4 podCIDR, or for an IPv6-only network set \"EnableIPv4\": false with EnableIPv6 and IPv6Network"
    )]
    NoIpv4PodCidr {
        /// The node.
        node: String,
        /// Its pod CIDRs.
        cidrs: Vec<String>,
    },
    /// The pod CIDR is outside `Network`.
    #[error(
        "subnet \"{network}\" specified in the flannel net config doesn't contain \"{cidr}\" PodCIDR of the {node:?} node"
    )]
    OutsideNetwork {
        /// The network.
        network: Ipv4Net,
        /// The pod CIDR.
        cidr: Ipv4Net,
        /// The node.
        node: String,
    },
    /// A public IP annotation is not an IPv4 address.
    #[error("node {node:?}: annotation {key}={value:?} is not an IPv4 address")]
    BadPublicIp {
        /// The node.
        node: String,
        /// The annotation.
        key: String,
        /// Its value.
        value: String,
    },
    /// The backend data annotation is not JSON.
    #[error("node {node:?}: annotation {key} is not valid JSON: {error}")]
    BadBackendData {
        /// The node.
        node: String,
        /// The annotation.
        key: String,
        /// The parser's message.
        error: String,
    },
}

impl NodeError {
    /// The label bad nodes are counted under (`weft_store_bad_records_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            NodeError::PodCidrNotAssigned(_)
            | NodeError::TooManyPodCidrs(_)
            | NodeError::InvalidCidr(_)
            | NodeError::MissingIpv4PodCidr
            | NodeError::NoIpv4PodCidr { .. }
            | NodeError::OutsideNetwork { .. }
            | NodeError::MissingIpv6PodCidr
            | NodeError::NoIpv6PodCidr { .. }
            | NodeError::Ipv6OutsideNetwork { .. } => "bad_pod_cidr",
            NodeError::BadPublicIp { .. } | NodeError::BadPublicIpv6 { .. } => "bad_public_ip",
            NodeError::BadBackendData { .. } => "invalid_json",
        }
    }
}

fn name_of(node: &Node) -> String {
    node.metadata.name.clone().unwrap_or_default()
}

/// The value of annotation `key`, if set.
pub fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn parse_cidr(s: &str) -> Result<IpNet, NodeError> {
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| NodeError::InvalidCidr(s.to_owned()))
}

/// The node's pod CIDRs as flannel reads them: `spec.podCIDR` when
/// `spec.podCIDRs` is empty, else the first IPv4 and IPv6 of at most two.
pub fn pod_cidrs(node: &Node) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), NodeError> {
    let spec = node.spec.as_ref();
    let list: Vec<&str> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(list) if !list.is_empty() => list.iter().map(String::as_str).collect(),
        _ => vec![spec.and_then(|s| s.pod_cidr.as_deref()).unwrap_or_default()],
    };
    if list.len() > 2 {
        return Err(NodeError::TooManyPodCidrs(name_of(node)));
    }
    let (mut v4, mut v6) = (None, None);
    for s in list {
        match parse_cidr(s)? {
            IpNet::V4(n) => {
                v4.get_or_insert(n);
            }
            IpNet::V6(n) => {
                v6.get_or_insert(n);
            }
        }
    }
    Ok((v4, v6))
}

/// flannel's first `AcquireLease` check: `spec.podCIDR` is set.
fn require_pod_cidr(node: &Node) -> Result<(), NodeError> {
    let spec = node.spec.as_ref();
    if spec
        .and_then(|s| s.pod_cidr.as_deref())
        .unwrap_or_default()
        .is_empty()
    {
        return Err(NodeError::PodCidrNotAssigned(name_of(node)));
    }
    Ok(())
}

/// This node's own subnet for `AcquireLease`: `spec.podCIDR` must be set and
/// its IPv4 CIDR must lie inside the config's `Network`.
pub fn own_subnet(node: &Node, network: Ipv4Net) -> Result<Ipv4Net, NodeError> {
    let name = name_of(node);
    require_pod_cidr(node)?;
    let cidr = match pod_cidrs(node)? {
        (Some(v4), _) => v4,
        (None, _) => {
            return Err(NodeError::NoIpv4PodCidr {
                node: name,
                cidrs: listed_cidrs(node),
            });
        }
    };
    if !network.contains(&cidr) {
        return Err(NodeError::OutsideNetwork {
            network,
            cidr,
            node: name,
        });
    }
    Ok(cidr)
}

/// The pod CIDRs as the node lists them, for messages.
fn listed_cidrs(node: &Node) -> Vec<String> {
    let spec = node.spec.as_ref();
    spec.and_then(|s| s.pod_cidrs.clone())
        .filter(|l| !l.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default()
}

/// This node's own IPv6 subnet for `AcquireLease` with `EnableIPv6`: the
/// first IPv6 pod CIDR, which must lie inside the config's `IPv6Network`
/// (flannel's message). Call after [`own_subnet`] (which checks that a pod
/// CIDR is assigned at all).
pub fn own_ipv6_subnet(node: &Node, network: Ipv6Net) -> Result<Ipv6Net, NodeError> {
    let name = name_of(node);
    let Some(cidr) = pod_cidrs(node)?.1 else {
        return Err(NodeError::NoIpv6PodCidr {
            node: name,
            cidrs: listed_cidrs(node),
        });
    };
    if !network.contains(&cidr) {
        return Err(NodeError::Ipv6OutsideNetwork {
            network,
            cidr,
            node: name,
        });
    }
    Ok(cidr)
}

/// This node's own IPv6 subnet for `AcquireLease` in an IPv6-only network:
/// `spec.podCIDR` must be set (flannel's check) and the first IPv6 pod CIDR
/// must lie inside `IPv6Network`; an IPv4 pod CIDR beside it is ignored.
pub fn own_ipv6_only_subnet(node: &Node, network: Ipv6Net) -> Result<Ipv6Net, NodeError> {
    require_pod_cidr(node)?;
    own_ipv6_subnet(node, network)
}

/// A backend data annotation, kept as written (compacted as flannel's
/// json.Marshal would), only validated; `null` or empty is none.
fn backend_json(node: &Node, key: &str) -> Result<Option<String>, NodeError> {
    match annotation(node, key).filter(|d| !d.is_empty()) {
        None => Ok(None),
        Some(text) => Ok(Some(crate::core::json::compact(
            serde_json::from_str::<&serde_json::value::RawValue>(text)
                .map_err(|e| NodeError::BadBackendData {
                    node: name_of(node),
                    key: key.to_owned(),
                    error: e.to_string(),
                })?
                .get(),
        ))
        .filter(|d| d != "null")),
    }
}

/// flannel's `nodeToLease` with IPv6 off (see [`node_to_lease_with`]).
pub fn node_to_lease(node: &Node, keys: &Annotations) -> Result<Lease, NodeError> {
    node_to_lease_with(node, keys, false)
}

/// flannel's `nodeToLease`: public IP, backend type and data from the
/// annotations, subnet from the first IPv4 pod CIDR; with `enable_ipv6`
/// also the public IPv6 (`public-ipv6`), `backend-v6-data` and the first
/// IPv6 pod CIDR, which must be there.
pub fn node_to_lease_with(
    node: &Node,
    keys: &Annotations,
    enable_ipv6: bool,
) -> Result<Lease, NodeError> {
    let mut lease = node_to_lease_v4(node, keys)?;
    if enable_ipv6 {
        let raw = annotation(node, &keys.public_ipv6).unwrap_or_default();
        let public_ipv6: Ipv6Addr = raw.parse().map_err(|_| NodeError::BadPublicIpv6 {
            node: name_of(node),
            key: keys.public_ipv6.clone(),
            value: raw.to_owned(),
        })?;
        lease.attrs.public_ipv6 = Some(public_ipv6);
        lease.attrs.backend_v6_data = backend_json(node, &keys.backend_v6_data)?;
        lease.ipv6_subnet = Some(pod_cidrs(node)?.1.ok_or(NodeError::MissingIpv6PodCidr)?);
    }
    Ok(lease)
}

/// flannel's `nodeToLease` in an IPv6-only network: the public IPv6
/// (`public-ipv6`, which must be there), `backend-v6-data`, backend type and
/// the first IPv6 pod CIDR, on [`NO_IPV4_SUBNET`] with `PublicIP` 0.0.0.0.
/// `public-ip` and `backend-data` are not read: a node without them (as
/// flannel leaves an IPv6-only node) is usable.
pub fn node_to_lease_v6_only(node: &Node, keys: &Annotations) -> Result<Lease, NodeError> {
    let raw = annotation(node, &keys.public_ipv6).unwrap_or_default();
    let public_ipv6: Ipv6Addr = raw.parse().map_err(|_| NodeError::BadPublicIpv6 {
        node: name_of(node),
        key: keys.public_ipv6.clone(),
        value: raw.to_owned(),
    })?;
    let backend_v6_data = backend_json(node, &keys.backend_v6_data)?;
    let ipv6_subnet = pod_cidrs(node)?.1.ok_or(NodeError::MissingIpv6PodCidr)?;
    Ok(Lease {
        subnet: NO_IPV4_SUBNET,
        ipv6_subnet: Some(ipv6_subnet),
        attrs: LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: Some(public_ipv6),
            backend_type: annotation(node, &keys.backend_type)
                .unwrap_or_default()
                .to_owned(),
            backend_data: None,
            backend_v6_data,
        },
        expiration: None,
    })
}

fn node_to_lease_v4(node: &Node, keys: &Annotations) -> Result<Lease, NodeError> {
    let name = name_of(node);
    let raw_ip = annotation(node, &keys.public_ip).unwrap_or_default();
    let public_ip: Ipv4Addr = raw_ip.parse().map_err(|_| NodeError::BadPublicIp {
        node: name.clone(),
        key: keys.public_ip.clone(),
        value: raw_ip.to_owned(),
    })?;
    let backend_data = backend_json(node, &keys.backend_data)?;
    let subnet = pod_cidrs(node)?.0.ok_or(NodeError::MissingIpv4PodCidr)?;
    Ok(Lease {
        subnet,
        ipv6_subnet: None,
        attrs: LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: annotation(node, &keys.backend_type)
                .unwrap_or_default()
                .to_owned(),
            backend_data,
            backend_v6_data: None,
        },
        expiration: None,
    })
}

/// Whether the node takes part (`kube-subnet-manager: "true"`).
pub fn is_managed(node: &Node, keys: &Annotations) -> bool {
    annotation(node, &keys.subnet_kube_managed) == Some("true")
}

/// The annotations this node must carry to publish `attrs`, minus those it
/// already carries: empty when nothing changed. `public-ip` takes the value of
/// `public-ip-overwrite` when that is set (flannel's NAT case).
///
/// Attributes without an IPv4 half (an IPv6-only network: `PublicIP`
/// 0.0.0.0 and no `BackendData`) ask for neither `public-ip` nor
/// `backend-data`: flannel writes both only with IPv4 backend data.
pub fn annotation_changes(
    node: &Node,
    keys: &Annotations,
    attrs: &LeaseAttrs,
) -> Result<BTreeMap<String, String>, NodeError> {
    let mut wanted = vec![
        (keys.backend_type.clone(), attrs.backend_type.clone()),
        (keys.subnet_kube_managed.clone(), "true".to_owned()),
    ];
    let ipv4 = attrs.backend_data.is_some() || !attrs.public_ip.is_unspecified();
    if ipv4 {
        let overwrite = annotation(node, &keys.public_ip_overwrite).filter(|v| !v.is_empty());
        let public_ip = match overwrite {
            Some(overwrite) => {
                overwrite
                    .parse::<Ipv4Addr>()
                    .map_err(|_| NodeError::BadPublicIp {
                        node: name_of(node),
                        key: keys.public_ip_overwrite.clone(),
                        value: overwrite.to_owned(),
                    })?;
                overwrite.to_owned()
            }
            None => attrs.public_ip.to_string(),
        };
        wanted.push((keys.public_ip.clone(), public_ip));
    }
    if let Some(data) = &attrs.backend_data {
        wanted.push((keys.backend_data.clone(), data.clone()));
    }
    // IPv6 (flannel: vxlan with BackendV6Data not null): backend-v6-data, and
    // public-ipv6 from public-ipv6-overwrite when that is set.
    if let Some(data) = &attrs.backend_v6_data {
        wanted.push((keys.backend_v6_data.clone(), data.clone()));
        let overwrite = annotation(node, &keys.public_ipv6_overwrite).filter(|v| !v.is_empty());
        let public_ipv6 = match overwrite {
            Some(overwrite) => {
                overwrite
                    .parse::<Ipv6Addr>()
                    .map_err(|_| NodeError::BadPublicIpv6 {
                        node: name_of(node),
                        key: keys.public_ipv6_overwrite.clone(),
                        value: overwrite.to_owned(),
                    })?;
                Some(overwrite.to_owned())
            }
            None => attrs.public_ipv6.map(|ip| ip.to_string()),
        };
        if let Some(ip) = public_ipv6 {
            wanted.push((keys.public_ipv6.clone(), ip));
        }
    }
    Ok(wanted
        .into_iter()
        .filter(|(k, v)| annotation(node, k) != Some(v.as_str()))
        .collect())
}

/// The VXLAN data this node published before (flannel's `GetStoredMacAddresses`),
/// so the VtepMAC peers know survives a restart.
pub fn stored_vxlan_data(node: &Node, keys: &Annotations) -> Option<VxlanBackendData> {
    annotation(node, &keys.backend_data).and_then(|d| VxlanBackendData::from_json(d).ok())
}

/// The IPv6 VXLAN data this node published before (`backend-v6-data`), so
/// the IPv6 VtepMAC peers know survives a restart too.
pub fn stored_vxlan_v6_data(node: &Node, keys: &Annotations) -> Option<VxlanBackendData> {
    annotation(node, &keys.backend_v6_data).and_then(|d| VxlanBackendData::from_json(d).ok())
}

/// The `node-public-ipv6` annotation (flannel's `GetStoredPublicIP` for
/// IPv6): when set it replaces `--public-ipv6`.
pub fn node_public_ipv6(node: &Node, keys: &Annotations) -> Result<Option<Ipv6Addr>, NodeError> {
    match annotation(node, &keys.node_public_ipv6).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| NodeError::BadPublicIpv6 {
            node: name_of(node),
            key: keys.node_public_ipv6.clone(),
            value: v.to_owned(),
        }),
    }
}

/// The `node-public-ip` annotation (flannel's `GetStoredPublicIP`): when set it
/// replaces `--public-ip`.
pub fn node_public_ip(node: &Node, keys: &Annotations) -> Result<Option<Ipv4Addr>, NodeError> {
    match annotation(node, &keys.node_public_ip).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| NodeError::BadPublicIp {
            node: name_of(node),
            key: keys.node_public_ip.clone(),
            value: v.to_owned(),
        }),
    }
}

/// What flannel compares to decide whether an update changed a lease.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct LeaseFields {
    backend_type: Option<String>,
    /// `backend-data` and `public-ip`, compared with IPv4 on only.
    v4: Option<(Option<String>, Option<String>)>,
    /// `backend-v6-data` and `public-ipv6`, compared with IPv6 on only.
    v6: Option<(Option<String>, Option<String>)>,
}

impl LeaseFields {
    fn of(node: &Node, keys: &Annotations, families: Families) -> LeaseFields {
        let get = |k: &str| annotation(node, k).map(str::to_owned);
        LeaseFields {
            backend_type: get(&keys.backend_type),
            v4: families
                .ipv4
                .then(|| (get(&keys.backend_data), get(&keys.public_ip))),
            v6: families
                .ipv6
                .then(|| (get(&keys.backend_v6_data), get(&keys.public_ipv6))),
        }
    }
}

/// The address families of the network (`EnableIPv4`, `EnableIPv6`): which
/// halves of a node's pod CIDRs and annotations make its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Families {
    ipv4: bool,
    ipv6: bool,
}

#[derive(Debug, Clone)]
struct Known {
    managed: bool,
    fields: LeaseFields,
    /// The lease last published for this node, if it ever had a usable one.
    lease: Option<Lease>,
    /// Why the current annotations are unusable, if they are.
    error: Option<NodeError>,
}

/// What the table wants sent to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The listed nodes' leases, to apply with reset semantics.
    Snapshot(Vec<Lease>),
    /// One lease added, changed or removed.
    Event(LeaseEvent),
}

/// A node skipped because its annotations or pod CIDR are unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadNode {
    /// The node.
    pub node: String,
    /// What is wrong with it.
    pub error: NodeError,
}

/// The result of one watcher event.
#[derive(Debug, Default)]
pub struct Step {
    /// What to send the agent, if anything.
    pub change: Option<Change>,
    /// Newly seen bad nodes (each reported once per distinct bad state).
    pub bad: Vec<BadNode>,
}

/// The nodes known from the watch, by name: flannel's informer handlers as a
/// state machine fed by kube-runtime watcher events.
#[derive(Debug)]
pub struct NodeTable {
    keys: Annotations,
    families: Families,
    known: BTreeMap<String, Known>,
    /// Nodes of a (re)list in progress.
    listing: Option<BTreeMap<String, Known>>,
}

impl NodeTable {
    /// An empty table for the annotation keys `keys`, IPv6 off.
    pub fn new(keys: Annotations) -> NodeTable {
        NodeTable::with_ipv6(keys, false)
    }

    /// An empty table; with `enable_ipv6` leases carry the nodes' IPv6 pod
    /// CIDR and VTEP, and a node without them is skipped as bad.
    pub fn with_ipv6(keys: Annotations, enable_ipv6: bool) -> NodeTable {
        NodeTable::with_families(keys, true, enable_ipv6)
    }

    /// An empty table for a network with `EnableIPv4` and `EnableIPv6` as
    /// given (neither: as [`NodeTable::new`]). IPv6-only (`enable_ipv4` false): leases are the nodes' IPv6
    /// halves on [`NO_IPV4_SUBNET`] ([`node_to_lease_v6_only`]), and only
    /// `backend-v6-data`, `public-ipv6` and `backend-type` changes count.
    pub fn with_families(keys: Annotations, enable_ipv4: bool, enable_ipv6: bool) -> NodeTable {
        NodeTable {
            keys,
            families: Families {
                ipv4: enable_ipv4 || !enable_ipv6,
                ipv6: enable_ipv6,
            },
            known: BTreeMap::new(),
            listing: None,
        }
    }

    fn fields(&self, node: &Node) -> LeaseFields {
        LeaseFields::of(node, &self.keys, self.families)
    }

    fn lease_of(&self, node: &Node) -> Result<Lease, NodeError> {
        match self.families.ipv4 {
            true => node_to_lease_with(node, &self.keys, self.families.ipv6),
            false => node_to_lease_v6_only(node, &self.keys),
        }
    }

    fn known_of(&self, node: &Node, previous: Option<&Known>) -> Known {
        let managed = is_managed(node, &self.keys);
        let fields = self.fields(node);
        if !managed {
            return Known {
                managed,
                fields,
                lease: None,
                error: None,
            };
        }
        match self.lease_of(node) {
            Ok(lease) => Known {
                managed,
                fields,
                lease: Some(lease),
                error: None,
            },
            Err(error) => Known {
                managed,
                fields,
                lease: previous.and_then(|p| p.lease.clone()),
                error: Some(error),
            },
        }
    }

    /// A (re)list starts.
    pub fn init(&mut self) {
        self.listing = Some(BTreeMap::new());
    }

    /// One node of the (re)list.
    pub fn init_apply(&mut self, node: &Node) {
        let name = name_of(node);
        let known = self.known_of(node, None);
        self.listing
            .get_or_insert_with(BTreeMap::new)
            .insert(name, known);
    }

    /// The (re)list is complete: its nodes replace the table, as a snapshot.
    pub fn init_done(&mut self) -> Step {
        let mut listed = self.listing.take().unwrap_or_default();
        let mut bad = Vec::new();
        for (name, k) in &mut listed {
            if let Some(error) = &k.error {
                // As on a watch event: a node whose annotations turned bad keeps
                // its last good lease (until fixed or deleted), so a relist does
                // not cut traffic that a MODIFIED event would have kept.
                k.lease = self.known.get(name).and_then(|old| old.lease.clone());
                let reported = self
                    .known
                    .get(name)
                    .is_some_and(|old| old.fields == k.fields && old.error.as_ref() == Some(error));
                if !reported {
                    bad.push(BadNode {
                        node: name.clone(),
                        error: error.clone(),
                    });
                }
            }
        }
        let leases = listed
            .values()
            .filter(|k| k.managed)
            .filter_map(|k| k.lease.clone())
            .collect();
        self.known = listed;
        Step {
            change: Some(Change::Snapshot(leases)),
            bad,
        }
    }

    /// A node was added or modified.
    pub fn apply(&mut self, node: &Node) -> Step {
        let name = name_of(node);
        let previous = self.known.get(&name);
        if !is_managed(node, &self.keys) {
            // flannel ignores updates of nodes without kube-subnet-manager=true.
            if previous.is_none() {
                let known = self.known_of(node, None);
                self.known.insert(name, known);
            }
            return Step::default();
        }
        if let Some(p) = previous
            && p.managed
            && p.fields == self.fields(node)
        {
            return Step::default();
        }
        let known = self.known_of(node, previous);
        let step = match &known.error {
            Some(error) => Step {
                change: None,
                bad: vec![BadNode {
                    node: name.clone(),
                    error: error.clone(),
                }],
            },
            None => Step {
                change: known
                    .lease
                    .clone()
                    .map(|l| Change::Event(LeaseEvent::Added(l))),
                bad: Vec::new(),
            },
        };
        self.known.insert(name, known);
        step
    }

    /// A node was deleted: its last lease is removed.
    pub fn delete(&mut self, node: &Node) -> Step {
        let name = name_of(node);
        let lease = match self.known.remove(&name) {
            Some(k) => k.lease,
            None if is_managed(node, &self.keys) => self.lease_of(node).ok(),
            None => None,
        };
        Step {
            change: lease.map(|l| Change::Event(LeaseEvent::Removed(l.subnet_key()))),
            bad: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, cidrs: &[&str], ann: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(
                    ann.iter()
                        .map(|(k, v)| (format!("flannel.alpha.coreos.com/{k}"), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidrs.first().map(|c| c.to_string()),
                pod_cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()),
                ..NodeSpec::default()
            }),
            status: None,
        }
    }

    fn peer(name: &str, cidr: &str, ip: &str, mac: &str) -> Node {
        let data = format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#);
        node(
            name,
            &[cidr],
            &[
                ("kube-subnet-manager", "true"),
                ("backend-type", "vxlan"),
                ("public-ip", ip),
                ("backend-data", &data),
            ],
        )
    }

    #[test]
    fn pod_cidr_rules_and_messages() {
        let net: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        assert_eq!(
            own_subnet(&node("a", &[], &[]), net)
                .unwrap_err()
                .to_string(),
            r#"node "a" pod cidr not assigned"#
        );
        assert_eq!(
            own_subnet(&node("a", &["10.244.1.7/24"], &[]), net).unwrap(),
            "10.244.1.0/24".parse::<Ipv4Net>().unwrap()
        );
        assert_eq!(
            own_subnet(&node("a", &["fd00::/64", "10.244.2.0/24"], &[]), net).unwrap(),
            "10.244.2.0/24".parse::<Ipv4Net>().unwrap()
        );
        assert_eq!(
            own_subnet(
                &node("a", &["10.244.1.0/24", "fd00::/64", "10.244.3.0/24"], &[]),
                net
            )
            .unwrap_err()
            .to_string(),
            r#"node "a" pod cidrs should be IPv4/IPv6 only or dualstack"#
        );
        assert_eq!(
            own_subnet(&node("a", &["10.9.1.0/24"], &[]), net)
                .unwrap_err()
                .to_string(),
            r#"subnet "10.244.0.0/16" specified in the flannel net config doesn't contain "10.9.1.0/24" PodCIDR of the "a" node"#
        );
        assert_eq!(
            own_subnet(&node("a", &["10.244.1.0/33"], &[]), net)
                .unwrap_err()
                .to_string(),
            "invalid CIDR address: 10.244.1.0/33"
        );
        assert!(matches!(
            own_subnet(&node("a", &["fd00::/64"], &[]), net),
            Err(NodeError::NoIpv4PodCidr { .. })
        ));
        // podCIDRs empty: podCIDR alone counts.
        let mut n = node("a", &[], &[]);
        n.spec.as_mut().unwrap().pod_cidr = Some("10.244.4.0/24".into());
        assert_eq!(own_subnet(&n, net).unwrap().to_string(), "10.244.4.0/24");
    }

    #[test]
    fn node_to_lease_reads_flannels_annotations() {
        let keys = Annotations::default();
        let n = peer("b", "10.244.2.0/24", "192.168.1.2", "0e:00:00:00:00:02");
        let lease = node_to_lease(&n, &keys).unwrap();
        assert_eq!(lease.subnet.to_string(), "10.244.2.0/24");
        assert_eq!(
            lease.attrs.to_json(),
            r#"{"PublicIP":"192.168.1.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:02"}}"#
        );
        let bad_ip = node(
            "c",
            &["10.244.3.0/24"],
            &[("kube-subnet-manager", "true"), ("public-ip", "x")],
        );
        assert_eq!(
            node_to_lease(&bad_ip, &keys).unwrap_err().kind(),
            "bad_public_ip"
        );
        let bad_data = node(
            "c",
            &["10.244.3.0/24"],
            &[("public-ip", "1.2.3.4"), ("backend-data", "{nope")],
        );
        assert_eq!(
            node_to_lease(&bad_data, &keys).unwrap_err().kind(),
            "invalid_json"
        );
        let no_cidr = node("c", &[], &[("public-ip", "1.2.3.4")]);
        assert_eq!(
            node_to_lease(&no_cidr, &keys).unwrap_err().to_string(),
            "invalid CIDR address: "
        );
        let v6_only = node("c", &["fd00::/64"], &[("public-ip", "1.2.3.4")]);
        assert_eq!(
            node_to_lease(&v6_only, &keys).unwrap_err().to_string(),
            "missing IPv4 address on n.Spec.PodCIDRs"
        );
    }

    #[test]
    fn changes_only_what_differs_and_honours_overwrite() {
        let keys = Annotations::default();
        let attrs = LeaseAttrs::vxlan(
            "192.168.1.2".parse().unwrap(),
            &VxlanBackendData {
                vni: 1,
                vtep_mac: "0e:00:00:00:00:02".parse().unwrap(),
            },
        );
        let fresh = node("b", &["10.244.2.0/24"], &[]);
        let all = annotation_changes(&fresh, &keys, &attrs).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all["flannel.alpha.coreos.com/public-ip"], "192.168.1.2");
        let done = peer("b", "10.244.2.0/24", "192.168.1.2", "0e:00:00:00:00:02");
        assert!(annotation_changes(&done, &keys, &attrs).unwrap().is_empty());
        let mut natted = done.clone();
        natted
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys.public_ip_overwrite.clone(), "203.0.113.9".into());
        let changes = annotation_changes(&natted, &keys, &attrs).unwrap();
        assert_eq!(
            changes.into_iter().collect::<Vec<_>>(),
            vec![(keys.public_ip.clone(), "203.0.113.9".to_owned())]
        );
        natted
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys.public_ip_overwrite.clone(), "nat-box".into());
        assert_eq!(
            annotation_changes(&natted, &keys, &attrs)
                .unwrap_err()
                .to_string(),
            r#"node "b": annotation flannel.alpha.coreos.com/public-ip-overwrite="nat-box" is not an IPv4 address"#
        );
        assert_eq!(
            stored_vxlan_data(&done, &keys)
                .unwrap()
                .vtep_mac
                .to_string(),
            "0e:00:00:00:00:02"
        );
    }

    /// A dual-stack peer as flannel publishes it.
    fn dual_peer(name: &str, cidrs: [&str; 2], ip: &str, ip6: &str, mac6: &str) -> Node {
        let data = r#"{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}"#;
        let data6 = format!(r#"{{"VNI":1,"VtepMAC":"{mac6}"}}"#);
        node(
            name,
            &cidrs,
            &[
                ("kube-subnet-manager", "true"),
                ("backend-type", "vxlan"),
                ("public-ip", ip),
                ("backend-data", data),
                ("public-ipv6", ip6),
                ("backend-v6-data", &data6),
            ],
        )
    }

    #[test]
    fn node_to_lease_reads_both_families_with_ipv6_on() {
        let keys = Annotations::default();
        let n = dual_peer(
            "b",
            ["10.244.2.0/24", "fd00:0:0:2::/64"],
            "192.168.1.2",
            "fd01::2",
            "0e:06:00:00:00:02",
        );
        let lease = node_to_lease_with(&n, &keys, true).unwrap();
        assert_eq!(lease.key(), "10.244.2.0-24&fd00:0:0:2::-64");
        assert_eq!(
            lease.attrs.to_json(),
            r#"{"PublicIP":"192.168.1.2","PublicIPv6":"fd01::2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:06:00:00:00:02"}}"#
        );
        assert_eq!(
            lease.attrs.vxlan_v6_data().unwrap().vtep_mac.to_string(),
            "0e:06:00:00:00:02"
        );
        // The IPv6 pod CIDR first in the list: the same lease.
        let swapped = dual_peer(
            "b",
            ["fd00:0:0:2::/64", "10.244.2.0/24"],
            "192.168.1.2",
            "fd01::2",
            "0e:06:00:00:00:02",
        );
        assert_eq!(node_to_lease_with(&swapped, &keys, true).unwrap(), lease);
        // IPv6 off: the v6 parts are ignored, as flannel's nodeToLease does.
        let v4 = node_to_lease(&n, &keys).unwrap();
        assert_eq!(v4.ipv6_subnet, None);
        assert_eq!(v4.attrs.public_ipv6, None);
        assert_eq!(v4.attrs.backend_v6_data, None);
        // IPv6 on and no IPv6 pod CIDR: flannel's message.
        let mut v4_only = n.clone();
        v4_only.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.244.2.0/24".into()]);
        v4_only.spec.as_mut().unwrap().pod_cidr = Some("10.244.2.0/24".into());
        assert_eq!(
            node_to_lease_with(&v4_only, &keys, true)
                .unwrap_err()
                .to_string(),
            "missing IPv6 address on n.Spec.PodCIDRs"
        );
        // A bad or missing public-ipv6, a bad backend-v6-data.
        let with = |k: &str, v: &str| {
            let mut m = n.clone();
            m.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(format!("flannel.alpha.coreos.com/{k}"), v.into());
            node_to_lease_with(&m, &keys, true)
        };
        assert_eq!(
            with("public-ipv6", "10.0.0.1").unwrap_err().kind(),
            "bad_public_ip"
        );
        assert_eq!(with("public-ipv6", "").unwrap_err().kind(), "bad_public_ip");
        assert_eq!(
            with("backend-v6-data", "{").unwrap_err().kind(),
            "invalid_json"
        );
        assert_eq!(
            with("backend-v6-data", "null")
                .unwrap()
                .attrs
                .backend_v6_data,
            None
        );
    }

    #[test]
    fn own_ipv6_subnet_rules_and_messages() {
        let net: Ipv6Net = "fd00::/48".parse().unwrap();
        assert_eq!(
            own_ipv6_subnet(&node("a", &["10.244.1.0/24", "fd00:0:0:1::/64"], &[]), net)
                .unwrap()
                .to_string(),
            "fd00:0:0:1::/64"
        );
        assert_eq!(
            own_ipv6_subnet(&node("a", &["10.244.1.0/24", "fd09::/64"], &[]), net)
                .unwrap_err()
                .to_string(),
            r#"subnet "fd00::/48" specified in the flannel net config doesn't contain "fd09::/64" IPv6 PodCIDR of the "a" node"#
        );
        let err = own_ipv6_subnet(&node("a", &["10.244.1.0/24"], &[]), net).unwrap_err();
        assert!(matches!(err, NodeError::NoIpv6PodCidr { .. }), "{err}");
        assert!(err.to_string().contains("EnableIPv6"), "{err}");
        assert_eq!(err.kind(), "bad_pod_cidr");
    }

    #[test]
    fn v6_annotations_are_published_and_honour_the_v6_overwrite() {
        let keys = Annotations::default();
        let mut attrs = LeaseAttrs::vxlan(
            "192.168.1.2".parse().unwrap(),
            &VxlanBackendData {
                vni: 1,
                vtep_mac: "0e:00:00:00:00:01".parse().unwrap(),
            },
        );
        attrs.public_ipv6 = Some("fd01::2".parse().unwrap());
        attrs.backend_v6_data = Some(r#"{"VNI":1,"VtepMAC":"0e:06:00:00:00:02"}"#.into());
        let fresh = node("b", &["10.244.2.0/24", "fd00:0:0:2::/64"], &[]);
        let all = annotation_changes(&fresh, &keys, &attrs).unwrap();
        assert_eq!(all.len(), 6);
        assert_eq!(all[&keys.public_ipv6], "fd01::2");
        assert_eq!(
            all[&keys.backend_v6_data],
            r#"{"VNI":1,"VtepMAC":"0e:06:00:00:00:02"}"#
        );
        let done = dual_peer(
            "b",
            ["10.244.2.0/24", "fd00:0:0:2::/64"],
            "192.168.1.2",
            "fd01::2",
            "0e:06:00:00:00:02",
        );
        assert!(annotation_changes(&done, &keys, &attrs).unwrap().is_empty());
        // Only the v6 MAC changed: only backend-v6-data is patched.
        let mut moved = attrs.clone();
        moved.backend_v6_data = Some(r#"{"VNI":1,"VtepMAC":"0e:06:00:00:00:22"}"#.into());
        assert_eq!(
            annotation_changes(&done, &keys, &moved)
                .unwrap()
                .into_keys()
                .collect::<Vec<_>>(),
            vec![keys.backend_v6_data.clone()]
        );
        let mut natted = done.clone();
        let ann = natted.metadata.annotations.as_mut().unwrap();
        ann.insert(keys.public_ipv6_overwrite.clone(), "2001:db8::9".into());
        assert_eq!(
            annotation_changes(&natted, &keys, &attrs)
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            vec![(keys.public_ipv6.clone(), "2001:db8::9".to_owned())]
        );
        let ann = natted.metadata.annotations.as_mut().unwrap();
        ann.insert(keys.public_ipv6_overwrite.clone(), "203.0.113.9".into());
        assert_eq!(
            annotation_changes(&natted, &keys, &attrs)
                .unwrap_err()
                .to_string(),
            r#"node "b": annotation flannel.alpha.coreos.com/public-ipv6-overwrite="203.0.113.9" is not an IPv6 address"#
        );
        // No BackendV6Data (IPv6 off): no v6 annotation is asked for.
        let v4 = LeaseAttrs {
            backend_v6_data: None,
            ..attrs.clone()
        };
        assert!(
            !annotation_changes(&fresh, &keys, &v4)
                .unwrap()
                .keys()
                .any(|k| k == &keys.public_ipv6 || k == &keys.backend_v6_data)
        );
        assert_eq!(
            stored_vxlan_v6_data(&done, &keys)
                .unwrap()
                .vtep_mac
                .to_string(),
            "0e:06:00:00:00:02"
        );
        assert_eq!(stored_vxlan_v6_data(&fresh, &keys), None);
    }

    #[test]
    fn node_public_ipv6_is_read_and_checked() {
        let keys = Annotations::default();
        assert_eq!(node_public_ipv6(&node("a", &[], &[]), &keys), Ok(None));
        assert_eq!(
            node_public_ipv6(&node("a", &[], &[("node-public-ipv6", "")]), &keys),
            Ok(None)
        );
        assert_eq!(
            node_public_ipv6(
                &node("a", &[], &[("node-public-ipv6", "2001:db8::7")]),
                &keys
            ),
            Ok(Some("2001:db8::7".parse().unwrap()))
        );
        let err = node_public_ipv6(&node("a", &[], &[("node-public-ipv6", "10.1.1.1")]), &keys)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"node "a": annotation flannel.alpha.coreos.com/node-public-ipv6="10.1.1.1" is not an IPv6 address"#
        );
        // The v4 one is separate.
        assert_eq!(
            node_public_ip(
                &node("a", &[], &[("node-public-ipv6", "2001:db8::7")]),
                &keys
            ),
            Ok(None)
        );
    }

    #[test]
    fn with_ipv6_on_the_table_carries_v6_and_sees_v6_changes() {
        let keys = Annotations::default();
        let mut t = NodeTable::with_ipv6(keys.clone(), true);
        let a = dual_peer(
            "a",
            ["10.244.1.0/24", "fd00:0:0:1::/64"],
            "192.168.1.1",
            "fd01::1",
            "0e:06:00:00:00:01",
        );
        let v4_only = peer("b", "10.244.2.0/24", "192.168.1.2", "0e:00:00:00:00:02");
        t.init();
        t.init_apply(&a);
        t.init_apply(&v4_only);
        let step = t.init_done();
        let Some(Change::Snapshot(leases)) = step.change else {
            panic!("{step:?}")
        };
        assert_eq!(
            leases.iter().map(Lease::key).collect::<Vec<_>>(),
            ["10.244.1.0-24&fd00:0:0:1::-64"]
        );
        assert_eq!(
            step.bad.len(),
            1,
            "a node without IPv6 is skipped with IPv6 on"
        );
        // flannel's order: the public IPv6 is read before the pod CIDRs.
        assert_eq!(step.bad[0].error.kind(), "bad_public_ip");
        // A new IPv6 VtepMAC alone is a change.
        let moved = dual_peer(
            "a",
            ["10.244.1.0/24", "fd00:0:0:1::/64"],
            "192.168.1.1",
            "fd01::1",
            "0e:06:00:00:00:11",
        );
        assert!(matches!(
            t.apply(&moved).change,
            Some(Change::Event(LeaseEvent::Added(l))) if l.attrs.vxlan_v6_data().unwrap().vtep_mac.to_string() == "0e:06:00:00:00:11"
        ));
        // So is a new public IPv6, and removal names the whole key.
        let mut readdressed = moved.clone();
        readdressed
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys.public_ipv6.clone(), "fd01::99".into());
        assert!(matches!(
            t.apply(&readdressed).change,
            Some(Change::Event(LeaseEvent::Added(l))) if l.attrs.public_ipv6 == Some("fd01::99".parse().unwrap())
        ));
        assert!(
            t.apply(&readdressed).change.is_none(),
            "no change, no event"
        );
        assert!(matches!(
            t.delete(&readdressed).change,
            Some(Change::Event(LeaseEvent::Removed(k))) if k.to_string() == "10.244.1.0-24&fd00:0:0:1::-64"
        ));
        // IPv6 off: a v6-only annotation change is no event (flannel's fields).
        let mut v4_table = NodeTable::new(keys.clone());
        v4_table.init();
        v4_table.init_apply(&a);
        v4_table.init_done();
        assert!(v4_table.apply(&moved).change.is_none());
    }

    /// An IPv6-only peer as flannel publishes it: no `public-ip`, no `backend-data`.
    fn v6_only_peer(name: &str, cidr: &str, ip6: &str, mac6: &str) -> Node {
        let data6 = format!(r#"{{"VNI":1,"VtepMAC":"{mac6}"}}"#);
        node(
            name,
            &[cidr],
            &[
                ("kube-subnet-manager", "true"),
                ("backend-type", "vxlan"),
                ("public-ipv6", ip6),
                ("backend-v6-data", &data6),
            ],
        )
    }

    #[test]
    fn ipv6_only_node_to_lease_reads_the_v6_half_on_the_zero_subnet() {
        let keys = Annotations::default();
        let n = v6_only_peer("b", "fd00:0:0:2::/64", "fd01::2", "0e:06:00:00:00:02");
        let lease = node_to_lease_v6_only(&n, &keys).unwrap();
        assert_eq!(lease.key(), "0.0.0.0-0&fd00:0:0:2::-64");
        assert!(!lease.has_ipv4());
        assert_eq!(
            lease.attrs.to_json(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd01::2","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:06:00:00:00:02"}}"#
        );
        // podCIDR alone (no podCIDRs) works too.
        let mut single = n.clone();
        single.spec.as_mut().unwrap().pod_cidrs = None;
        assert_eq!(node_to_lease_v6_only(&single, &keys).unwrap(), lease);
        // A dual-stack node's IPv4 half and v4 annotations (even a bad
        // public-ip) are ignored.
        let mut dual = n.clone();
        dual.spec.as_mut().unwrap().pod_cidrs =
            Some(vec!["10.244.2.0/24".into(), "fd00:0:0:2::/64".into()]);
        let ann = dual.metadata.annotations.as_mut().unwrap();
        ann.insert(keys.public_ip.clone(), "bogus".into());
        ann.insert(keys.backend_data.clone(), "{".into());
        assert_eq!(node_to_lease_v6_only(&dual, &keys).unwrap(), lease);
        // No IPv6 pod CIDR, a missing or bad public-ipv6: flannel's order and messages.
        let v4_only = v6_only_peer("c", "10.244.3.0/24", "fd01::3", "0e:06:00:00:00:03");
        assert_eq!(
            node_to_lease_v6_only(&v4_only, &keys)
                .unwrap_err()
                .to_string(),
            "missing IPv6 address on n.Spec.PodCIDRs"
        );
        let no_ip = node(
            "d",
            &["fd00:0:0:4::/64"],
            &[("kube-subnet-manager", "true")],
        );
        assert_eq!(
            node_to_lease_v6_only(&no_ip, &keys).unwrap_err().kind(),
            "bad_public_ip"
        );
        let mut bad_data = n.clone();
        bad_data
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys.backend_v6_data.clone(), "{".into());
        assert_eq!(
            node_to_lease_v6_only(&bad_data, &keys).unwrap_err().kind(),
            "invalid_json"
        );
        // The IPv4 reading of that node fails: it has no public-ip.
        assert_eq!(
            node_to_lease(&n, &keys).unwrap_err().kind(),
            "bad_public_ip"
        );
    }

    #[test]
    fn ipv6_only_own_subnet_needs_a_pod_cidr_and_an_ipv6_one_inside_the_network() {
        let net: Ipv6Net = "fd00::/48".parse().unwrap();
        assert_eq!(
            own_ipv6_only_subnet(&node("a", &["fd00:0:0:1::/64"], &[]), net)
                .unwrap()
                .to_string(),
            "fd00:0:0:1::/64"
        );
        assert_eq!(
            own_ipv6_only_subnet(&node("a", &["10.244.1.0/24", "fd00:0:0:1::/64"], &[]), net)
                .unwrap()
                .to_string(),
            "fd00:0:0:1::/64"
        );
        assert_eq!(
            own_ipv6_only_subnet(&node("a", &[], &[]), net)
                .unwrap_err()
                .to_string(),
            r#"node "a" pod cidr not assigned"#
        );
        assert!(matches!(
            own_ipv6_only_subnet(&node("a", &["10.244.1.0/24"], &[]), net),
            Err(NodeError::NoIpv6PodCidr { .. })
        ));
        assert!(matches!(
            own_ipv6_only_subnet(&node("a", &["fd09::/64"], &[]), net),
            Err(NodeError::Ipv6OutsideNetwork { .. })
        ));
    }

    #[test]
    fn ipv6_only_attrs_publish_v6_annotations_and_neither_public_ip_nor_backend_data() {
        let keys = Annotations::default();
        let attrs = LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: Some("fd01::2".parse().unwrap()),
            backend_type: "vxlan".into(),
            backend_data: None,
            backend_v6_data: Some(r#"{"VNI":1,"VtepMAC":"0e:06:00:00:00:02"}"#.into()),
        };
        let fresh = node("b", &["fd00:0:0:2::/64"], &[]);
        let all = annotation_changes(&fresh, &keys, &attrs).unwrap();
        assert_eq!(
            all.into_iter().collect::<Vec<_>>(),
            vec![
                (keys.backend_type.clone(), "vxlan".to_owned()),
                (
                    keys.backend_v6_data.clone(),
                    r#"{"VNI":1,"VtepMAC":"0e:06:00:00:00:02"}"#.to_owned()
                ),
                (keys.subnet_kube_managed.clone(), "true".to_owned()),
                (keys.public_ipv6.clone(), "fd01::2".to_owned()),
            ]
        );
        // Published: nothing more to patch; a public-ip-overwrite (for IPv4)
        // is neither written nor checked.
        let mut done = v6_only_peer("b", "fd00:0:0:2::/64", "fd01::2", "0e:06:00:00:00:02");
        assert!(annotation_changes(&done, &keys, &attrs).unwrap().is_empty());
        done.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys.public_ip_overwrite.clone(), "not-an-ip".into());
        assert!(annotation_changes(&done, &keys, &attrs).unwrap().is_empty());
        // public-ipv6-overwrite is honoured.
        done.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys.public_ipv6_overwrite.clone(), "2001:db8::9".into());
        assert_eq!(
            annotation_changes(&done, &keys, &attrs)
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            vec![(keys.public_ipv6.clone(), "2001:db8::9".to_owned())]
        );
        // The own VtepMAC comes back from backend-v6-data.
        assert_eq!(
            stored_vxlan_v6_data(&done, &keys)
                .unwrap()
                .vtep_mac
                .to_string(),
            "0e:06:00:00:00:02"
        );
    }

    #[test]
    fn an_ipv6_only_table_carries_v6_only_leases_and_sees_only_v6_changes() {
        let keys = Annotations::default();
        let mut t = NodeTable::with_families(keys.clone(), false, true);
        let a = v6_only_peer("a", "fd00:0:0:1::/64", "fd01::1", "0e:06:00:00:00:01");
        // A dual-stack node: only its IPv6 half.
        let d = dual_peer(
            "d",
            ["10.244.4.0/24", "fd00:0:0:4::/64"],
            "192.168.1.4",
            "fd01::4",
            "0e:06:00:00:00:04",
        );
        let v4_only = peer("b", "10.244.2.0/24", "192.168.1.2", "0e:00:00:00:00:02");
        t.init();
        t.init_apply(&a);
        t.init_apply(&d);
        t.init_apply(&v4_only);
        let step = t.init_done();
        let Some(Change::Snapshot(leases)) = step.change else {
            panic!("{step:?}")
        };
        assert_eq!(
            leases.iter().map(Lease::key).collect::<Vec<_>>(),
            ["0.0.0.0-0&fd00:0:0:1::-64", "0.0.0.0-0&fd00:0:0:4::-64"]
        );
        assert!(leases.iter().all(|l| l.attrs.public_ip.is_unspecified()));
        assert_eq!(step.bad.len(), 1, "the IPv4-only node is skipped");
        assert_eq!(step.bad[0].node, "b");
        // A v4-only annotation change is no event.
        let mut d2 = d.clone();
        d2.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys.public_ip.clone(), "192.168.1.44".into());
        assert!(t.apply(&d2).change.is_none());
        // A new IPv6 VtepMAC is.
        let moved = v6_only_peer("a", "fd00:0:0:1::/64", "fd01::1", "0e:06:00:00:00:11");
        assert!(matches!(
            t.apply(&moved).change,
            Some(Change::Event(LeaseEvent::Added(l))) if l.attrs.vxlan_v6_data().unwrap().vtep_mac.to_string() == "0e:06:00:00:00:11"
        ));
        // Removal names the IPv6-only key.
        assert!(matches!(
            t.delete(&moved).change,
            Some(Change::Event(LeaseEvent::Removed(k))) if k.to_string() == "0.0.0.0-0&fd00:0:0:1::-64"
        ));
        // IPv6 on and IPv4 on is the dual-stack table.
        let mut dual = NodeTable::with_families(keys.clone(), true, true);
        dual.init();
        dual.init_apply(&d);
        assert!(matches!(
            dual.init_done().change,
            Some(Change::Snapshot(l)) if l[0].key() == "10.244.4.0-24&fd00:0:0:4::-64"
        ));
    }

    #[test]
    fn table_follows_flannels_event_rules() {
        let keys = Annotations::default();
        let mut t = NodeTable::new(keys.clone());
        let a = peer("a", "10.244.1.0/24", "192.168.1.1", "0e:00:00:00:00:01");
        let broken = node(
            "x",
            &["10.244.9.0/24"],
            &[("kube-subnet-manager", "true"), ("public-ip", "bogus")],
        );
        let plain = node("p", &["10.244.8.0/24"], &[]);
        t.init();
        t.init_apply(&a);
        t.init_apply(&broken);
        t.init_apply(&plain);
        let step = t.init_done();
        let Some(Change::Snapshot(leases)) = step.change else {
            panic!("{step:?}")
        };
        assert_eq!(leases.len(), 1);
        assert_eq!(step.bad.len(), 1);
        assert_eq!(step.bad[0].node, "x");

        // A heartbeat (status only) is no event.
        let mut beat = a.clone();
        beat.metadata.resource_version = Some("99".into());
        assert!(t.apply(&beat).change.is_none());
        // A new MAC is.
        let moved = peer("a", "10.244.1.0/24", "192.168.1.1", "0e:00:00:00:00:11");
        assert!(matches!(
            t.apply(&moved).change,
            Some(Change::Event(LeaseEvent::Added(l))) if l.attrs.vxlan_data().unwrap().vtep_mac.to_string() == "0e:00:00:00:00:11"
        ));
        // The same bad node again: reported once only.
        assert!(t.apply(&broken).bad.is_empty());
        // A node that starts taking part.
        let b = peer("p", "10.244.8.0/24", "192.168.1.8", "0e:00:00:00:00:08");
        assert!(matches!(
            t.apply(&b).change,
            Some(Change::Event(LeaseEvent::Added(_)))
        ));
        // Malformed after valid: skipped, reported, the old lease kept for removal.
        let mut b_bad = b.clone();
        b_bad
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys.backend_data.clone(), "{".into());
        let step = t.apply(&b_bad);
        assert!(step.change.is_none());
        assert_eq!(step.bad[0].error.kind(), "invalid_json");
        // A relist keeps it too (not reported again); a never-good node stays out.
        t.init();
        t.init_apply(&moved);
        t.init_apply(&broken);
        t.init_apply(&b_bad);
        let step = t.init_done();
        assert!(step.bad.is_empty(), "{:?}", step.bad);
        let Some(Change::Snapshot(leases)) = step.change else {
            panic!("{step:?}")
        };
        let subnets: Vec<String> = leases.iter().map(|l| l.subnet.to_string()).collect();
        assert_eq!(subnets, ["10.244.1.0/24", "10.244.8.0/24"]);
        assert!(matches!(
            t.delete(&b_bad).change,
            Some(Change::Event(LeaseEvent::Removed(l))) if l.subnet.to_string() == "10.244.8.0/24"
        ));
        // Relist: the bad node already reported is not reported again.
        t.init();
        t.init_apply(&moved);
        t.init_apply(&broken);
        let step = t.init_done();
        assert!(step.bad.is_empty());
        assert!(matches!(step.change, Some(Change::Snapshot(l)) if l.len() == 1));
        assert!(t.delete(&plain).change.is_none());
    }
}
