//! Kubernetes mode through kube-rs's real HTTP client against an in-test API
//! server (`support/fake_kube.rs`): acquire, VtepMAC persistence, the node
//! watch (appear / change / delete, 410 relist, bookmarks), malformed
//! annotations, flannel's errors, NetworkUnavailable, node identity, auth;
//! dual-stack and IPv6-only (flannel's IPv6-only annotations, leases on the
//! zero IPv4 subnet).

#![allow(unreachable_pub)]
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use serde_json::json;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::fake_kube::{self, FakeKube, annotation, condition, node, publish};
use tokio::sync::mpsc;
use weft::core::lease::{LeaseAttrs, LeaseEvent, VxlanBackendData};
use weft::core::mac::MacAddr;
use weft::subnet::kube::annotations::DEFAULT_PREFIX;
use weft::subnet::kube::{KubeOptions, KubeStore, NodeIdentity, Patience};
use weft::subnet::{AcquireRequest, OwnAddress, StoreStats, StoreUpdate};

const NET_CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const P: &str = "flannel.alpha.coreos.com/";

fn opts(fake: &FakeKube, node: &str, dir: &Path) -> KubeOptions {
    let net_conf = dir.join("net-conf.json");
    std::fs::write(&net_conf, NET_CONF).unwrap();
    KubeOptions {
        api_url: Some(fake.url()),
        kubeconfig: None,
        annotation_prefix: DEFAULT_PREFIX.into(),
        net_config_path: net_conf,
        set_node_network_unavailable: true,
        identity: NodeIdentity {
            node_name: Some(node.into()),
            ..NodeIdentity::default()
        },
        patience: Patience {
            poll: Duration::from_millis(100),
            timeout: Duration::from_millis(700),
        },
    }
}

async fn open(opts: KubeOptions) -> (Arc<KubeStore>, Arc<StoreStats>) {
    let stats = Arc::new(StoreStats::default());
    let store = KubeStore::open(opts, stats.clone()).await.unwrap();
    (Arc::new(store), stats)
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn req(ip: &str, vtep_mac: &str) -> AcquireRequest {
    AcquireRequest {
        attrs: LeaseAttrs::vxlan(
            ip.parse().unwrap(),
            &VxlanBackendData {
                vni: 1,
                vtep_mac: mac(vtep_mac),
            },
        ),
        previous_subnet: None,
        previous_ipv6_subnet: None,
    }
}

fn published(name: &str, cidr: &str, ip: &str, vtep_mac: &str) -> k8s_openapi::api::core::v1::Node {
    let mut n = node(name, Some(cidr));
    publish(&mut n, ip, vtep_mac);
    n
}

async fn next(rx: &mut mpsc::Receiver<StoreUpdate>) -> StoreUpdate {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no store update within 10 s")
        .expect("the store task stopped")
}

fn snapshot_subnets(update: &StoreUpdate) -> Vec<String> {
    match update {
        StoreUpdate::Snapshot(leases) => {
            let mut s: Vec<_> = leases.iter().map(|l| l.subnet.to_string()).collect();
            s.sort();
            s
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

fn single_event(update: StoreUpdate) -> LeaseEvent {
    match update {
        StoreUpdate::Events(mut events) if events.len() == 1 => events.remove(0),
        other => panic!("expected one event, got {other:?}"),
    }
}

/// Only the verbs of flannel's ClusterRole were used.
fn assert_flannel_rbac(fake: &FakeKube) {
    for r in fake.requests() {
        let ok = match r.method.as_str() {
            "GET" => r.path.starts_with("/api/v1/nodes") || r.path.contains("/pods/"),
            "PATCH" => r.path.starts_with("/api/v1/nodes/") && r.path.ends_with("/status"),
            _ => false,
        };
        assert!(
            ok,
            "request outside flannel's RBAC: {} {}",
            r.method, r.path
        );
    }
}

#[tokio::test]
async fn acquire_patches_annotations_once_and_not_again_after_a_restart() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    fake.add_node(node("n1", Some("10.244.1.0/24")));
    let (store, _) = open(opts(&fake, "n1", dir.path())).await;
    let config = store.network_config().await.unwrap();
    assert!(
        store
            .find_own(OwnAddress::Ipv4("192.168.1.1".parse().unwrap()))
            .await
            .unwrap()
            .is_none()
    );
    let lease = store
        .acquire(&config, &req("192.168.1.1", "0e:00:00:00:00:01"))
        .await
        .unwrap();
    assert_eq!(lease.subnet.to_string(), "10.244.1.0/24");

    let patches = fake.annotation_patches("n1");
    assert_eq!(
        patches,
        vec![json!({"metadata":{"annotations":{
            "flannel.alpha.coreos.com/backend-data": r#"{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}"#,
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/public-ip": "192.168.1.1",
        }}})]
    );
    let patch = &fake.requests_to("PATCH", "/api/v1/nodes/n1/status")[0];
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    let n1 = fake.node("n1").unwrap();
    assert_eq!(
        annotation(&n1, &format!("{P}public-ip")),
        Some("192.168.1.1")
    );
    assert_eq!(
        annotation(&n1, "node.alpha.kubernetes.io/ttl"),
        Some("0"),
        "other annotations are kept"
    );

    // A restart with nothing changed: the MAC comes back, nothing is patched.
    drop(store);
    let (store, _) = open(opts(&fake, "n1", dir.path())).await;
    let own = store
        .find_own(OwnAddress::Ipv4("192.168.1.1".parse().unwrap()))
        .await
        .unwrap()
        .expect("the node's published lease");
    assert_eq!(
        own.attrs.vxlan_data().unwrap().vtep_mac,
        mac("0e:00:00:00:00:01")
    );
    store
        .acquire(&config, &req("192.168.1.1", "0e:00:00:00:00:01"))
        .await
        .unwrap();
    assert_eq!(
        fake.annotation_patches("n1").len(),
        1,
        "no patch when nothing changed"
    );

    // A new public IP: one patch with just that key.
    store
        .acquire(&config, &req("192.168.1.9", "0e:00:00:00:00:01"))
        .await
        .unwrap();
    let patches = fake.annotation_patches("n1");
    assert_eq!(patches.len(), 2);
    assert_eq!(
        patches[1],
        json!({"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":"192.168.1.9"}}})
    );
    assert_flannel_rbac(&fake);
}

#[tokio::test]
async fn a_node_flannel_ran_keeps_its_vtep_mac_and_needs_no_patch() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    fake.add_node(published(
        "f1",
        "10.244.5.0/24",
        "192.168.1.5",
        "c6:d2:32:6f:8f:44",
    ));
    let (store, _) = open(opts(&fake, "f1", dir.path())).await;
    let own = store
        .find_own(OwnAddress::Ipv4("192.168.1.5".parse().unwrap()))
        .await
        .unwrap()
        .unwrap();
    let data = own.attrs.vxlan_data().unwrap();
    assert_eq!(data.vtep_mac, mac("c6:d2:32:6f:8f:44"));
    let config = store.network_config().await.unwrap();
    store
        .acquire(&config, &req("192.168.1.5", "c6:d2:32:6f:8f:44"))
        .await
        .unwrap();
    assert!(fake.annotation_patches("f1").is_empty());
}

#[tokio::test]
async fn public_ip_overwrite_and_node_public_ip_annotations() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    let mut n = node("n1", Some("10.244.1.0/24"));
    let a = n.metadata.annotations.as_mut().unwrap();
    a.insert(format!("{P}public-ip-overwrite"), "203.0.113.7".into());
    a.insert(format!("{P}node-public-ip"), "192.168.1.77".into());
    fake.add_node(n);
    let (store, _) = open(opts(&fake, "n1", dir.path())).await;
    assert_eq!(
        store.stored_public_ip().await.unwrap(),
        Some(Ipv4Addr::new(192, 168, 1, 77))
    );
    let config = store.network_config().await.unwrap();
    store
        .acquire(&config, &req("192.168.1.77", "0e:00:00:00:00:01"))
        .await
        .unwrap();
    let n1 = fake.node("n1").unwrap();
    assert_eq!(
        annotation(&n1, &format!("{P}public-ip")),
        Some("203.0.113.7")
    );
    // Again: the overwrite is in place, nothing to patch.
    store
        .acquire(&config, &req("192.168.1.77", "0e:00:00:00:00:01"))
        .await
        .unwrap();
    assert_eq!(fake.annotation_patches("n1").len(), 1);
}

#[tokio::test]
async fn acquire_errors_are_flannels() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    let config = weft::core::config::NetConfig::parse(NET_CONF).unwrap();
    let err = |store: Arc<KubeStore>| {
        let config = config.clone();
        async move {
            store
                .acquire(&config, &req("192.168.1.1", "0e:00:00:00:00:01"))
                .await
                .unwrap_err()
                .to_string()
        }
    };
    fake.add_node(node("bare", None));
    let (store, _) = open(opts(&fake, "bare", dir.path())).await;
    assert_eq!(err(store).await, r#"node "bare" pod cidr not assigned"#);

    fake.add_node(node("far", Some("10.9.0.0/24")));
    let (store, _) = open(opts(&fake, "far", dir.path())).await;
    assert_eq!(
        err(store).await,
        r#"subnet "10.244.0.0/16" specified in the flannel net config doesn't contain "10.9.0.0/24" PodCIDR of the "far" node"#
    );

    let mut three = node("three", Some("10.244.3.0/24"));
    three.spec.as_mut().unwrap().pod_cidrs = Some(vec![
        "10.244.3.0/24".into(),
        "fd00::/64".into(),
        "10.244.4.0/24".into(),
    ]);
    fake.add_node(three);
    let (store, _) = open(opts(&fake, "three", dir.path())).await;
    assert_eq!(
        err(store).await,
        r#"node "three" pod cidrs should be IPv4/IPv6 only or dualstack"#
    );

    let (store, _) = open(opts(&fake, "ghost", dir.path())).await;
    assert_eq!(
        err(store).await,
        r#"lease store unavailable: timeout contacting kube-api, failed to patch node "ghost". Error: nodes "ghost" not found (NotFound, HTTP 404)"#
    );
    for name in ["bare", "far", "three"] {
        assert!(
            fake.annotation_patches(name).is_empty(),
            "{name}: no annotation is written for a lease that cannot be used"
        );
    }
}

#[tokio::test]
async fn watch_turns_node_changes_into_lease_events() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    fake.add_node(published(
        "n1",
        "10.244.1.0/24",
        "192.168.1.1",
        "0e:00:00:00:00:01",
    ));
    fake.add_node(published(
        "n2",
        "10.244.2.0/24",
        "192.168.1.2",
        "0e:00:00:00:00:02",
    ));
    fake.add_node(node("plain", Some("10.244.9.0/24")));
    let (store, stats) = open(opts(&fake, "n1", dir.path())).await;
    let (tx, mut rx) = mpsc::channel(16);
    let task = store.clone().spawn(tx);

    let first = next(&mut rx).await;
    assert_eq!(snapshot_subnets(&first), ["10.244.1.0/24", "10.244.2.0/24"]);
    let list = &fake.requests_to("GET", "/api/v1/nodes")[0];
    assert_eq!(list.param("resourceVersion").as_deref(), Some("0"));

    // Another node's annotations appear.
    fake.add_node(published(
        "n3",
        "10.244.3.0/24",
        "192.168.1.3",
        "0e:00:00:00:00:03",
    ));
    match single_event(next(&mut rx).await) {
        LeaseEvent::Added(l) => {
            assert_eq!(l.subnet.to_string(), "10.244.3.0/24");
            assert_eq!(l.attrs.public_ip, Ipv4Addr::new(192, 168, 1, 3));
        }
        other => panic!("{other:?}"),
    }
    let watch = fake
        .requests_to("GET", "/api/v1/nodes")
        .into_iter()
        .find(|r| r.param("watch").as_deref() == Some("true"))
        .expect("a watch request");
    assert_eq!(watch.param("allowWatchBookmarks").as_deref(), Some("true"));
    assert!(watch.param("resourceVersion").is_some_and(|v| v != "0"));

    // A kubelet heartbeat (status only) and a label change are no events;
    // the next update is the MAC change after them.
    fake.update_node("n3", |n| {
        let c = n.status.as_mut().unwrap().conditions.as_mut().unwrap();
        c[0].last_heartbeat_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
    });
    fake.update_node("n3", |n| {
        n.metadata
            .labels
            .get_or_insert_default()
            .insert("x".into(), "y".into());
    });
    fake.update_node("n3", |n| publish(n, "192.168.1.3", "0e:00:00:00:00:33"));
    match single_event(next(&mut rx).await) {
        LeaseEvent::Added(l) => assert_eq!(
            l.attrs.vxlan_data().unwrap().vtep_mac,
            mac("0e:00:00:00:00:33")
        ),
        other => panic!("{other:?}"),
    }
    // A node taking part later is an event too.
    fake.update_node("plain", |n| publish(n, "192.168.1.9", "0e:00:00:00:00:09"));
    assert!(
        matches!(single_event(next(&mut rx).await), LeaseEvent::Added(l) if l.subnet.to_string() == "10.244.9.0/24")
    );

    fake.delete_node("n3");
    match single_event(next(&mut rx).await) {
        LeaseEvent::Removed(key) => assert_eq!(key.to_string(), "10.244.3.0-24"),
        other => panic!("{other:?}"),
    }
    let s = stats.snapshot();
    assert_eq!(s.snapshots, 1);
    assert!(s.connected);
    assert!(s.bad_records.is_empty());
    task.abort();
    assert_flannel_rbac(&fake);
}

#[tokio::test]
async fn a_410_relists_and_the_snapshot_carries_the_missed_changes() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    for i in 1..=3u8 {
        fake.add_node(published(
            &format!("n{i}"),
            &format!("10.244.{i}.0/24"),
            &format!("192.168.1.{i}"),
            &format!("0e:00:00:00:00:0{i}"),
        ));
    }
    let (store, stats) = open(opts(&fake, "n1", dir.path())).await;
    let (tx, mut rx) = mpsc::channel(16);
    let task = store.clone().spawn(tx);
    assert_eq!(snapshot_subnets(&next(&mut rx).await).len(), 3);
    tokio::time::timeout(Duration::from_secs(5), async {
        while fake.open_watches() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the store opens a watch");

    // Changes the watch misses, then the history is compacted: 410 Gone.
    fake.set_delivery(false);
    fake.delete_node("n2");
    fake.add_node(published(
        "n4",
        "10.244.4.0/24",
        "192.168.1.4",
        "0e:00:00:00:00:04",
    ));
    fake.update_node("n3", |n| publish(n, "192.168.1.3", "0e:00:00:00:00:33"));
    fake.set_delivery(true);
    fake.expire();

    let update = next(&mut rx).await;
    assert_eq!(
        snapshot_subnets(&update),
        ["10.244.1.0/24", "10.244.3.0/24", "10.244.4.0/24"]
    );
    let StoreUpdate::Snapshot(leases) = update else {
        unreachable!()
    };
    let n3 = leases
        .iter()
        .find(|l| l.subnet.to_string() == "10.244.3.0/24")
        .unwrap();
    assert_eq!(
        n3.attrs.vxlan_data().unwrap().vtep_mac,
        mac("0e:00:00:00:00:33")
    );
    assert_eq!(stats.snapshot().snapshots, 2);
    let lists = fake
        .requests_to("GET", "/api/v1/nodes")
        .into_iter()
        .filter(|r| r.param("watch").is_none())
        .count();
    assert_eq!(lists, 2, "one list, one relist");

    // And the new watch delivers.
    fake.add_node(published(
        "n5",
        "10.244.5.0/24",
        "192.168.1.5",
        "0e:00:00:00:00:05",
    ));
    assert!(
        matches!(single_event(next(&mut rx).await), LeaseEvent::Added(l) if l.subnet.to_string() == "10.244.5.0/24")
    );
    task.abort();
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_the_last_bookmark_without_a_relist() {
    let fake = FakeKube::start();
    fake.set_bookmark_interval(Duration::from_millis(50));
    let dir = tempfile::tempdir().unwrap();
    fake.add_node(published(
        "n1",
        "10.244.1.0/24",
        "192.168.1.1",
        "0e:00:00:00:00:01",
    ));
    let (store, stats) = open(opts(&fake, "n1", dir.path())).await;
    let (tx, mut rx) = mpsc::channel(16);
    let task = store.clone().spawn(tx);
    next(&mut rx).await;
    // Other objects move the resource version on; only bookmarks tell the watcher.
    for i in 0..5 {
        fake.add_pod(fake_kube::pod("default", &format!("p{i}"), "n1"));
    }
    let now = fake.resource_version();
    tokio::time::sleep(Duration::from_secs(1)).await;
    fake.compact_before(now);
    fake.drop_watches();
    fake.add_node(published(
        "n2",
        "10.244.2.0/24",
        "192.168.1.2",
        "0e:00:00:00:00:02",
    ));
    assert!(
        matches!(single_event(next(&mut rx).await), LeaseEvent::Added(l) if l.subnet.to_string() == "10.244.2.0/24")
    );
    assert_eq!(stats.snapshot().snapshots, 1, "no relist was needed");
    let resumed = fake
        .requests_to("GET", "/api/v1/nodes")
        .into_iter()
        .filter(|r| r.param("watch").as_deref() == Some("true"))
        .nth(1)
        .expect("a second watch");
    assert_eq!(resumed.param("resourceVersion"), Some(now.to_string()));
    task.abort();
}

#[tokio::test]
async fn malformed_annotations_are_skipped_logged_and_counted() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    fake.add_node(published(
        "n1",
        "10.244.1.0/24",
        "192.168.1.1",
        "0e:00:00:00:00:01",
    ));
    fake.add_node(published(
        "good",
        "10.244.2.0/24",
        "192.168.1.2",
        "0e:00:00:00:00:02",
    ));
    fake.add_node(published(
        "bad-ip",
        "10.244.3.0/24",
        "not-an-ip",
        "0e:00:00:00:00:03",
    ));
    let mut bad_json = published("bad-json", "10.244.4.0/24", "192.168.1.4", "x");
    bad_json
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(format!("{P}backend-data"), "{\"VNI\":1,".into());
    fake.add_node(bad_json);
    let mut no_cidr = node("no-cidr", None);
    publish(&mut no_cidr, "192.168.1.5", "0e:00:00:00:00:05");
    fake.add_node(no_cidr);
    let (store, stats) = open(opts(&fake, "n1", dir.path())).await;
    let (tx, mut rx) = mpsc::channel(16);
    let task = store.clone().spawn(tx);
    assert_eq!(
        snapshot_subnets(&next(&mut rx).await),
        ["10.244.1.0/24", "10.244.2.0/24"]
    );
    let bad = stats.snapshot().bad_records;
    assert_eq!(bad.get("bad_public_ip"), Some(&1), "{bad:?}");
    assert_eq!(bad.get("invalid_json"), Some(&1), "{bad:?}");
    assert_eq!(bad.get("bad_pod_cidr"), Some(&1), "{bad:?}");

    // Heartbeats of a bad node are not counted again; fixing it makes it a lease.
    fake.update_node("bad-json", |n| {
        n.metadata
            .labels
            .get_or_insert_default()
            .insert("beat".into(), "1".into());
    });
    fake.update_node("bad-ip", |n| publish(n, "192.168.1.3", "0e:00:00:00:00:03"));
    assert!(
        matches!(single_event(next(&mut rx).await), LeaseEvent::Added(l) if l.subnet.to_string() == "10.244.3.0/24")
    );
    assert_eq!(stats.snapshot().bad_records.get("invalid_json"), Some(&1));
    task.abort();
}

#[tokio::test]
async fn network_unavailable_is_set_false_once_up_and_other_conditions_stay() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    fake.add_node(node("n1", Some("10.244.1.0/24")));
    fake.add_node(node("n2", Some("10.244.2.0/24")));
    let (store, _) = open(opts(&fake, "n1", dir.path())).await;
    let config = store.network_config().await.unwrap();
    let lease = store
        .acquire(&config, &req("192.168.1.1", "0e:00:00:00:00:01"))
        .await
        .unwrap();
    assert_eq!(
        condition(&fake.node("n1").unwrap(), "NetworkUnavailable")
            .unwrap()
            .status,
        "True",
        "not before the node is ready"
    );
    store.complete(&lease);
    let n1 = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = fake.node("n1").unwrap();
            if condition(&n, "NetworkUnavailable").is_some_and(|c| c.status == "False") {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("NetworkUnavailable=False within 5 s");
    let c = condition(&n1, "NetworkUnavailable").unwrap();
    assert_eq!(c.reason.as_deref(), Some("WeftIsUp"));
    assert!(c.last_transition_time.is_some() && c.last_heartbeat_time.is_some());
    assert_eq!(
        condition(&n1, "Ready").unwrap().status,
        "True",
        "merged by type"
    );
    assert_eq!(
        n1.status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .len(),
        2
    );

    // --set-node-network-unavailable=false leaves the condition alone.
    let mut o = opts(&fake, "n2", dir.path());
    o.set_node_network_unavailable = false;
    let (store, _) = open(o).await;
    let lease = store
        .acquire(&config, &req("192.168.1.2", "0e:00:00:00:00:02"))
        .await
        .unwrap();
    store.complete(&lease);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        condition(&fake.node("n2").unwrap(), "NetworkUnavailable")
            .unwrap()
            .status,
        "True"
    );
    let status_patches = fake.requests_to("PATCH", "/api/v1/nodes/n2/status");
    assert_eq!(status_patches.len(), 1, "the annotation patch only");
}

#[tokio::test]
async fn node_name_comes_from_node_name_or_the_pods_spec() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    fake.add_pod(fake_kube::pod("kube-flannel", "weft-abcde", "worker-7"));
    let mut o = opts(&fake, "x", dir.path());
    o.identity = NodeIdentity {
        node_name: None,
        pod_name: Some("weft-abcde".into()),
        pod_namespace: Some("kube-flannel".into()),
    };
    let (store, _) = open(o.clone()).await;
    assert_eq!(store.node_name(), "worker-7");

    o.identity.pod_namespace = None;
    let e = KubeStore::open(o.clone(), Arc::default())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "env variables POD_NAME and POD_NAMESPACE must be set"
    );

    o.identity.pod_namespace = Some("kube-flannel".into());
    o.identity.pod_name = Some("gone".into());
    let e = KubeStore::open(o, Arc::default()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"lease store unavailable: error retrieving pod spec for 'kube-flannel/gone': pods "gone" not found (NotFound, HTTP 404)"#
    );
}

#[tokio::test]
async fn kubeconfig_file_with_a_token_and_an_api_url_override() {
    let fake = FakeKube::start();
    fake.require_token("s3cret-token");
    let dir = tempfile::tempdir().unwrap();
    fake.add_node(node("n1", Some("10.244.1.0/24")));
    let kubeconfig = |server: &str| {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\nusers:\n- name: weft\n  user:\n    token: s3cret-token\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: weft\ncurrent-context: lab\n"
        )
    };
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, kubeconfig(&fake.url())).unwrap();
    let mut o = opts(&fake, "n1", dir.path());
    o.api_url = None;
    o.kubeconfig = Some(path.clone());
    let (store, _) = open(o.clone()).await;
    let config = store.network_config().await.unwrap();
    store
        .acquire(&config, &req("192.168.1.1", "0e:00:00:00:00:01"))
        .await
        .unwrap();
    assert!(!fake.requests().is_empty());
    for r in fake.requests() {
        assert_eq!(
            r.authorization.as_deref(),
            Some("Bearer s3cret-token"),
            "{}",
            r.path
        );
    }

    // --kube-api-url replaces the kubeconfig's server; the credentials stay.
    std::fs::write(&path, kubeconfig("http://127.0.0.1:9")).unwrap();
    o.api_url = Some(fake.url());
    let (store, _) = open(o).await;
    assert!(
        store
            .find_own(OwnAddress::Ipv4("192.168.1.1".parse().unwrap()))
            .await
            .unwrap()
            .is_some()
    );

    // Without credentials the server says 401 and acquire says so.
    let mut o = opts(&fake, "n1", dir.path());
    o.patience.timeout = Duration::from_millis(200);
    let (store, _) = open(o).await;
    let e = store
        .acquire(&config, &req("192.168.1.1", "0e:00:00:00:00:01"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("HTTP 401"), "{e}");
}

#[tokio::test]
async fn a_custom_annotation_prefix_is_normalised_and_bad_ones_are_refused() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    fake.add_node(node("n1", Some("10.244.1.0/24")));
    let mut o = opts(&fake, "n1", dir.path());
    o.annotation_prefix = "weft.example.com/lab".into();
    let (store, _) = open(o.clone()).await;
    let config = store.network_config().await.unwrap();
    store
        .acquire(&config, &req("192.168.1.1", "0e:00:00:00:00:01"))
        .await
        .unwrap();
    let n1 = fake.node("n1").unwrap();
    assert_eq!(
        annotation(&n1, "weft.example.com/lab-backend-type"),
        Some("vxlan")
    );
    assert_eq!(annotation(&n1, &format!("{P}backend-type")), None);

    o.annotation_prefix = "a/b/c".into();
    let e = KubeStore::open(o, Arc::default()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "error creating network manager: subnet/kube: prefix can contain at most single slash"
    );
}

#[tokio::test]
async fn net_conf_is_parsed_without_flannels_check_and_errors_name_the_file() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&fake, "n1", dir.path());
    // A /30 Network fails CheckNetworkConfig but the kube manager never runs it.
    std::fs::write(
        &o.net_config_path,
        r#"{"Network":"10.0.0.0/30","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let (store, _) = open(o.clone()).await;
    assert_eq!(
        store
            .network_config()
            .await
            .unwrap()
            .network
            .unwrap()
            .to_string(),
        "10.0.0.0/30"
    );
    std::fs::write(&o.net_config_path, "{").unwrap();
    let e = store.network_config().await.unwrap_err().to_string();
    assert!(e.contains("error parsing subnet config"), "{e}");
    std::fs::remove_file(&o.net_config_path).unwrap();
    let e = store.network_config().await.unwrap_err().to_string();
    assert!(e.starts_with("failed to read net conf"), "{e}");
}

const DUAL_NET_CONF: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"vxlan"}}"#;

/// A node with a dual-stack pod CIDR pair.
fn dual_node(name: &str, v4: &str, v6: &str) -> k8s_openapi::api::core::v1::Node {
    let mut n = node(name, Some(v4));
    n.spec.as_mut().unwrap().pod_cidrs = Some(vec![v4.into(), v6.into()]);
    n
}

fn dual_req(ip: &str, ip6: &str, vtep_mac: &str, v6_mac: &str) -> AcquireRequest {
    let mut r = req(ip, vtep_mac);
    r.attrs.public_ipv6 = Some(ip6.parse().unwrap());
    r.attrs.backend_v6_data = Some(
        VxlanBackendData {
            vni: 1,
            vtep_mac: mac(v6_mac),
        }
        .to_json(),
    );
    r
}

#[tokio::test]
async fn dual_stack_acquire_publishes_v6_annotations_and_the_watch_carries_v6() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    let mut n1 = dual_node("n1", "10.244.1.0/24", "fd00:0:0:1::/64");
    n1.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(format!("{P}node-public-ipv6"), "2001:db8::1".into());
    fake.add_node(n1);
    let o = opts(&fake, "n1", dir.path());
    std::fs::write(&o.net_config_path, DUAL_NET_CONF).unwrap();
    let (store, _) = open(o.clone()).await;
    let config = store.network_config().await.unwrap();
    assert_eq!(
        store.stored_public_ipv6().await.unwrap(),
        Some("2001:db8::1".parse().unwrap())
    );
    assert_eq!(store.stored_public_ip().await.unwrap(), None);
    let r = dual_req(
        "192.168.1.1",
        "2001:db8::1",
        "0e:00:00:00:00:01",
        "0e:06:00:00:00:01",
    );
    let lease = store.acquire(&config, &r).await.unwrap();
    assert_eq!(lease.key(), "10.244.1.0-24&fd00:0:0:1::-64");
    assert_eq!(lease.attrs, r.attrs);
    assert_eq!(
        fake.annotation_patches("n1"),
        vec![json!({"metadata":{"annotations":{
            "flannel.alpha.coreos.com/backend-data": r#"{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}"#,
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/backend-v6-data": r#"{"VNI":1,"VtepMAC":"0e:06:00:00:00:01"}"#,
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/public-ip": "192.168.1.1",
            "flannel.alpha.coreos.com/public-ipv6": "2001:db8::1",
        }}})]
    );
    // A restart: both VtepMACs come back, nothing is patched.
    drop(store);
    let (store, _) = open(o).await;
    let own = store
        .find_own(OwnAddress::Ipv4("192.168.1.1".parse().unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        own.attrs.vxlan_v6_data().unwrap().vtep_mac,
        mac("0e:06:00:00:00:01")
    );
    assert_eq!(own.key(), lease.key());
    let again = store.acquire(&config, &r).await.unwrap();
    assert_eq!(again, lease);
    assert_eq!(fake.annotation_patches("n1").len(), 1);

    // The watch reads peers' IPv6 pod CIDRs and annotations.
    let mut peer = dual_node("n2", "10.244.2.0/24", "fd00:0:0:2::/64");
    publish(&mut peer, "192.168.1.2", "0e:00:00:00:00:02");
    let a = peer.metadata.annotations.as_mut().unwrap();
    a.insert(format!("{P}public-ipv6"), "2001:db8::2".into());
    a.insert(
        format!("{P}backend-v6-data"),
        r#"{"VNI":1,"VtepMAC":"0e:06:00:00:00:02"}"#.into(),
    );
    let (tx, mut rx) = mpsc::channel(16);
    let task = store.clone().spawn(tx);
    let first = next(&mut rx).await;
    assert_eq!(snapshot_subnets(&first), ["10.244.1.0/24"]);
    fake.add_node(peer);
    match single_event(next(&mut rx).await) {
        LeaseEvent::Added(l) => {
            assert_eq!(l.key(), "10.244.2.0-24&fd00:0:0:2::-64");
            assert_eq!(l.attrs.public_ipv6, Some("2001:db8::2".parse().unwrap()));
            assert_eq!(
                l.attrs.vxlan_v6_data().unwrap().vtep_mac,
                mac("0e:06:00:00:00:02")
            );
        }
        other => panic!("{other:?}"),
    }
    fake.delete_node("n2");
    match single_event(next(&mut rx).await) {
        LeaseEvent::Removed(k) => assert_eq!(k.to_string(), "10.244.2.0-24&fd00:0:0:2::-64"),
        other => panic!("{other:?}"),
    }
    task.abort();
    assert_flannel_rbac(&fake);
}

#[tokio::test]
async fn dual_stack_pod_cidr_errors_are_flannels() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    fake.add_node(node("v4only", Some("10.244.1.0/24")));
    fake.add_node(dual_node("outside", "10.244.2.0/24", "fd09::/64"));
    let r = dual_req(
        "192.168.1.1",
        "2001:db8::1",
        "0e:00:00:00:00:01",
        "0e:06:00:00:00:01",
    );
    for (name, want) in [
        ("v4only", "has no IPv6 pod CIDR"),
        (
            "outside",
            r#"subnet "fd00::/48" specified in the flannel net config doesn't contain "fd09::/64" IPv6 PodCIDR of the "outside" node"#,
        ),
    ] {
        let o = opts(&fake, name, dir.path());
        std::fs::write(&o.net_config_path, DUAL_NET_CONF).unwrap();
        let (store, _) = open(o).await;
        let config = store.network_config().await.unwrap();
        let err = store.acquire(&config, &r).await.unwrap_err();
        assert!(err.to_string().contains(want), "{name}: {err}");
        // Without a public IPv6 the request itself is refused.
        let err = store
            .acquire(&config, &req("192.168.1.1", "0e:00:00:00:00:01"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no public IPv6"), "{err}");
    }
    assert!(fake.annotation_patches("v4only").is_empty());
}

const V6_ONLY_NET_CONF: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"vxlan"}}"#;

/// What the agent sends in an IPv6-only network: PublicIP 0.0.0.0, no BackendData.
fn v6_only_req(ip6: &str, v6_mac: &str) -> AcquireRequest {
    let mut r = dual_req("0.0.0.0", ip6, "0e:00:00:00:00:00", v6_mac);
    r.attrs.backend_data = None;
    r
}

/// An IPv6-only node as flannel publishes it: no public-ip, no backend-data.
fn v6_only_published(
    name: &str,
    cidr: &str,
    ip6: &str,
    v6_mac: &str,
) -> k8s_openapi::api::core::v1::Node {
    let mut n = node(name, Some(cidr));
    let a = n.metadata.annotations.as_mut().unwrap();
    a.insert(format!("{P}backend-type"), "vxlan".into());
    a.insert(format!("{P}kube-subnet-manager"), "true".into());
    a.insert(format!("{P}public-ipv6"), ip6.into());
    a.insert(
        format!("{P}backend-v6-data"),
        format!(r#"{{"VNI":1,"VtepMAC":"{v6_mac}"}}"#),
    );
    n
}

#[tokio::test]
async fn ipv6_only_acquire_publishes_flannels_v6_annotations_and_the_watch_carries_v6_only_leases()
{
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    fake.add_node(node("n1", Some("fd00:0:0:1::/64")));
    let o = opts(&fake, "n1", dir.path());
    std::fs::write(&o.net_config_path, V6_ONLY_NET_CONF).unwrap();
    let (store, _) = open(o.clone()).await;
    let config = store.network_config().await.unwrap();
    assert!(config.ipv6_only());
    let me = OwnAddress::Ipv6("2001:db8::1".parse().unwrap());
    assert_eq!(store.find_own(me).await.unwrap(), None);
    let r = v6_only_req("2001:db8::1", "0e:06:00:00:00:01");
    let lease = store.acquire(&config, &r).await.unwrap();
    assert_eq!(lease.key(), "0.0.0.0-0&fd00:0:0:1::-64");
    assert!(!lease.has_ipv4());
    assert_eq!(lease.attrs, r.attrs);
    // flannel's IPv6-only annotations: no public-ip, no backend-data.
    assert_eq!(
        fake.annotation_patches("n1"),
        vec![json!({"metadata":{"annotations":{
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/backend-v6-data": r#"{"VNI":1,"VtepMAC":"0e:06:00:00:00:01"}"#,
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/public-ipv6": "2001:db8::1",
        }}})]
    );
    // A restart: the IPv6 VtepMAC comes back on the IPv6-only lease, nothing is patched.
    drop(store);
    let (store, _) = open(o).await;
    let own = store.find_own(me).await.unwrap().expect("the own lease");
    assert_eq!(own.key(), lease.key());
    assert_eq!(own.attrs, r.attrs);
    let again = store.acquire(&config, &r).await.unwrap();
    assert_eq!(again, lease);
    assert_eq!(fake.annotation_patches("n1").len(), 1);

    // The watch: a flannel IPv6-only peer (no public-ip at all) and a
    // dual-stack node's IPv6 half are leases on the zero subnet.
    let (tx, mut rx) = mpsc::channel(16);
    let task = store.clone().spawn(tx);
    match next(&mut rx).await {
        StoreUpdate::Snapshot(leases) => {
            assert_eq!(
                leases.iter().map(|l| l.key()).collect::<Vec<_>>(),
                ["0.0.0.0-0&fd00:0:0:1::-64"]
            );
        }
        other => panic!("{other:?}"),
    }
    fake.add_node(v6_only_published(
        "n2",
        "fd00:0:0:2::/64",
        "2001:db8::2",
        "0e:06:00:00:00:02",
    ));
    match single_event(next(&mut rx).await) {
        LeaseEvent::Added(l) => {
            assert_eq!(l.key(), "0.0.0.0-0&fd00:0:0:2::-64");
            assert_eq!(l.attrs.public_ip, Ipv4Addr::UNSPECIFIED);
            assert_eq!(l.attrs.public_ipv6, Some("2001:db8::2".parse().unwrap()));
            assert_eq!(l.attrs.backend_data, None);
            assert_eq!(
                l.attrs.vxlan_v6_data().unwrap().vtep_mac,
                mac("0e:06:00:00:00:02")
            );
        }
        other => panic!("{other:?}"),
    }
    let mut dual = dual_node("n3", "10.244.3.0/24", "fd00:0:0:3::/64");
    publish(&mut dual, "192.168.1.3", "0e:00:00:00:00:03");
    let a = dual.metadata.annotations.as_mut().unwrap();
    a.insert(format!("{P}public-ipv6"), "2001:db8::3".into());
    a.insert(
        format!("{P}backend-v6-data"),
        r#"{"VNI":1,"VtepMAC":"0e:06:00:00:00:03"}"#.into(),
    );
    fake.add_node(dual);
    match single_event(next(&mut rx).await) {
        LeaseEvent::Added(l) => assert_eq!(l.key(), "0.0.0.0-0&fd00:0:0:3::-64"),
        other => panic!("{other:?}"),
    }
    fake.delete_node("n2");
    match single_event(next(&mut rx).await) {
        LeaseEvent::Removed(k) => assert_eq!(k.to_string(), "0.0.0.0-0&fd00:0:0:2::-64"),
        other => panic!("{other:?}"),
    }
    task.abort();
    assert_flannel_rbac(&fake);
}

#[tokio::test]
async fn ipv6_only_pod_cidr_and_request_errors_are_clear() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    fake.add_node(node("v4only", Some("10.244.1.0/24")));
    fake.add_node(node("outside", Some("fd09::/64")));
    fake.add_node(node("none", None));
    let r = v6_only_req("2001:db8::1", "0e:06:00:00:00:01");
    for (name, want) in [
        ("v4only", "has no IPv6 pod CIDR"),
        (
            "outside",
            r#"subnet "fd00::/48" specified in the flannel net config doesn't contain "fd09::/64" IPv6 PodCIDR of the "outside" node"#,
        ),
        ("none", r#"node "none" pod cidr not assigned"#),
    ] {
        let o = opts(&fake, name, dir.path());
        std::fs::write(&o.net_config_path, V6_ONLY_NET_CONF).unwrap();
        let (store, _) = open(o).await;
        let config = store.network_config().await.unwrap();
        let err = store.acquire(&config, &r).await.unwrap_err();
        assert!(err.to_string().contains(want), "{name}: {err}");
        assert!(fake.annotation_patches(name).is_empty());
    }
    // A config with neither family, an IPv6-only request without BackendV6Data.
    let o = opts(&fake, "v4only", dir.path());
    std::fs::write(
        &o.net_config_path,
        r#"{"EnableIPv4":false,"Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let (store, _) = open(o.clone()).await;
    let config = store.network_config().await.unwrap();
    let err = store.acquire(&config, &r).await.unwrap_err();
    assert!(err.to_string().contains("neither IPv4 nor IPv6"), "{err}");
    std::fs::write(&o.net_config_path, V6_ONLY_NET_CONF).unwrap();
    let config = store.network_config().await.unwrap();
    let mut bare = r.clone();
    bare.attrs.backend_v6_data = None;
    let err = store.acquire(&config, &bare).await.unwrap_err();
    assert!(err.to_string().contains("BackendV6Data"), "{err}");
}
