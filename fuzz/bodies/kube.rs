//! Kubernetes mode: the annotation prefix (`Annotations::new`, flannel's
//! `--kube-annotation-prefix` rules) and Node objects as the watch delivers
//! them (`pod_cidrs`, `own_subnet`, `node_to_lease`, `annotation_changes`,
//! `stored_vxlan_data`, `node_public_ip`), fed through `NodeTable`.
//!
//! Invariants: no panic; errors are classified; a normalised prefix
//! normalises to itself; a node's lease has the node's IPv4 pod CIDR and
//! attributes that round-trip through flannel's JSON; once the annotations
//! `annotation_changes` asks for are applied, it asks for nothing more; the
//! table only adds leases `node_to_lease` gives for managed nodes, snapshots
//! only leases of listed managed nodes (or the last good lease of a listed
//! node whose annotations turned bad), and removes only leases it published
//! (or, for a node it never saw, that node's own lease).
//!
//! Input: `prefix \0 (op node-json \0)...` with ops `a`pply, `d`elete,
//! `i`nit, `l`ist item, `f`inish list.

use super::input;
use k8s_openapi::api::core::v1::Node;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use weft::core::lease::{Lease, LeaseAttrs, LeaseEvent, VxlanBackendData};
use weft::core::mac::MacAddr;
use weft::subnet::kube::annotations::{Annotations, PrefixError};
use weft::subnet::kube::nodes::{self, Change, NodeTable, Step};

const KINDS: [&str; 3] = ["bad_pod_cidr", "bad_public_ip", "invalid_json"];

fn check_prefix(prefix: &str) -> Annotations {
    match Annotations::new(prefix) {
        Ok(a) => {
            assert!(
                a.prefix.ends_with('/') || a.prefix.ends_with('-'),
                "{:?}",
                a.prefix
            );
            assert!(a.prefix.matches('/').count() == 1);
            for key in [
                &a.backend_data,
                &a.backend_type,
                &a.public_ip,
                &a.subnet_kube_managed,
            ] {
                assert!(key.starts_with(&a.prefix));
            }
            assert_eq!(
                Annotations::new(&a.prefix).as_ref(),
                Ok(&a),
                "normalising is idempotent"
            );
            a
        }
        Err(e) => {
            assert_eq!(
                e == PrefixError::TooManySlashes,
                prefix.matches('/').count() > 1
            );
            Annotations::default()
        }
    }
}

fn check_node(node: &Node, keys: &Annotations) {
    let network = "10.244.0.0/16".parse().expect("a CIDR");
    let cidrs = nodes::pod_cidrs(node);
    if let Err(e) = &cidrs {
        assert!(KINDS.contains(&e.kind()));
    }
    match nodes::own_subnet(node, network) {
        Ok(subnet) => {
            assert!(network.contains(&subnet));
            assert_eq!(cidrs.as_ref().ok().and_then(|c| c.0), Some(subnet));
        }
        Err(e) => assert!(KINDS.contains(&e.kind()), "{e:?}"),
    }
    let attrs = match nodes::node_to_lease(node, keys) {
        Ok(lease) => {
            assert_eq!(cidrs.as_ref().ok().and_then(|c| c.0), Some(lease.subnet));
            let ip = nodes::annotation(node, &keys.public_ip).expect("a public IP");
            assert_eq!(ip.parse::<Ipv4Addr>().ok(), Some(lease.attrs.public_ip));
            super::lease::check_attrs(&lease.attrs);
            lease.attrs
        }
        Err(e) => {
            assert!(KINDS.contains(&e.kind()), "{e:?}");
            LeaseAttrs::vxlan(
                Ipv4Addr::new(192, 168, 100, 9),
                &VxlanBackendData {
                    vni: 1,
                    vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, 9]),
                },
            )
        }
    };
    match nodes::annotation_changes(node, keys, &attrs) {
        Ok(changes) => {
            let mut patched = node.clone();
            patched
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .extend(changes);
            assert_eq!(
                nodes::annotation_changes(&patched, keys, &attrs),
                Ok(BTreeMap::new()),
                "a patched node needs no more changes"
            );
        }
        Err(e) => assert_eq!(e.kind(), "bad_public_ip"),
    }
    if let Some(data) = nodes::stored_vxlan_data(node, keys) {
        super::lease::check_backend_data(&data);
    }
    if let Err(e) = nodes::node_public_ip(node, keys) {
        assert_eq!(e.kind(), "bad_public_ip");
    }
}

/// What the table published, to check removals against.
struct Model {
    published: Vec<Lease>,
    listing: Vec<Node>,
}

impl Model {
    fn step(&mut self, step: &Step, keys: &Annotations, node: Option<&Node>, op: u8) {
        for bad in &step.bad {
            assert!(KINDS.contains(&bad.error.kind()));
        }
        match &step.change {
            None => {}
            Some(Change::Snapshot(leases)) => {
                assert_eq!(op, b'f');
                for l in leases {
                    let current = self.listing.iter().any(|n| {
                        nodes::is_managed(n, keys)
                            && nodes::node_to_lease(n, keys).as_ref() == Ok(l)
                    });
                    // A listed node whose annotations turned bad keeps the
                    // lease it had (as on a watch event).
                    let kept = self.published.contains(l)
                        && self.listing.iter().any(|n| {
                            nodes::is_managed(n, keys) && nodes::node_to_lease(n, keys).is_err()
                        });
                    assert!(current || kept, "{l} is no listed node's lease");
                }
                self.published.extend(leases.iter().cloned());
                self.listing.clear();
            }
            Some(Change::Event(LeaseEvent::Added(l))) => {
                assert_eq!(op, b'a');
                let node = node.expect("apply has a node");
                assert!(nodes::is_managed(node, keys));
                assert_eq!(nodes::node_to_lease(node, keys).as_ref(), Ok(l));
                self.published.push(l.clone());
            }
            Some(Change::Event(LeaseEvent::Removed(l))) => {
                assert_eq!(op, b'd');
                let node = node.expect("delete has a node");
                assert!(
                    self.published.iter().any(|p| p.subnet_key() == *l)
                        || nodes::node_to_lease(node, keys).map(|n| n.subnet_key()) == Ok(*l),
                    "removed {l}, never published"
                );
            }
        }
    }
}

pub fn run(data: &[u8]) {
    let mut chunks = data.split(|b| *b == 0);
    let prefix = input::text(chunks.next().unwrap_or_default());
    let keys = check_prefix(&prefix);
    let mut table = NodeTable::new(keys.clone());
    let mut model = Model {
        published: Vec::new(),
        listing: Vec::new(),
    };
    for chunk in chunks.take(16) {
        let Some((&op, json)) = chunk.split_first() else {
            continue;
        };
        let node = serde_json::from_slice::<Node>(json).ok();
        if let Some(node) = &node {
            check_node(node, &keys);
        }
        let step = match (op, &node) {
            (b'a', Some(n)) => table.apply(n),
            (b'd', Some(n)) => table.delete(n),
            (b'l', Some(n)) => {
                table.init_apply(n);
                model.listing.push(n.clone());
                continue;
            }
            (b'i', _) => {
                table.init();
                model.listing.clear();
                continue;
            }
            (b'f', _) => table.init_done(),
            _ => continue,
        };
        model.step(&step, &keys, node.as_ref(), op);
    }
}

fn node_json(name: &str, cidrs: &[&str], ann: &[(&str, &str)]) -> String {
    let ann: serde_json::Map<String, serde_json::Value> = ann
        .iter()
        .map(|(k, v)| (format!("flannel.alpha.coreos.com/{k}"), (*v).into()))
        .collect();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": ann},
        "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.100.2"}]},
    })
    .to_string()
}

pub fn seeds() -> Vec<Vec<u8>> {
    let peer = |name: &str, i: u8| {
        let mac = format!("{{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:0{i}\"}}");
        node_json(
            name,
            &[&format!("10.244.{i}.0/24"), &format!("fd00:0:0:{i}::/64")],
            &[
                ("kube-subnet-manager", "true"),
                ("backend-type", "vxlan"),
                ("public-ip", &format!("192.168.100.{i}")),
                ("backend-data", &mac),
                ("node-public-ip", &format!("192.168.100.{i}")),
            ],
        )
    };
    let unmanaged = node_json("c", &["10.244.5.0/24"], &[("public-ip", "192.168.100.5")]);
    let bad = node_json(
        "d",
        &["10.244.6.0/33"],
        &[
            ("kube-subnet-manager", "true"),
            ("public-ip", "x"),
            ("backend-data", "{"),
        ],
    );
    let seq = |prefix: &str, ops: &[(u8, &String)]| {
        let mut out = prefix.as_bytes().to_vec();
        for (op, json) in ops {
            out.push(0);
            out.push(*op);
            out.extend_from_slice(json.as_bytes());
        }
        out
    };
    let (a, b) = (peer("a", 2), peer("b", 3));
    vec![
        seq(
            "flannel.alpha.coreos.com",
            &[
                (b'i', &a),
                (b'l', &a),
                (b'l', &unmanaged),
                (b'f', &a),
                (b'a', &b),
                (b'd', &a),
            ],
        ),
        seq(
            "example.com/x",
            &[(b'a', &a), (b'a', &bad), (b'd', &bad), (b'd', &b)],
        ),
        seq("a.b/c/d", &[(b'a', &unmanaged), (b'a', &a)]),
        // A relist in which node a's public IP turned bad: a keeps its
        // last good lease (libFuzzer found the model missing this).
        seq(
            "flannel.alpha.coreos.com",
            &[
                (b'i', &a),
                (b'l', &a),
                (b'f', &a),
                (b'i', &a),
                (
                    b'l',
                    &a.replace(
                        "/public-ip\":\"192.168.100.2\"",
                        "/public-ip\":\"192.168.100.~\"",
                    ),
                ),
                (b'f', &a),
            ],
        ),
    ]
}
