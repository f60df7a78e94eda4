//! The etcd store against a real etcd (the `etcd` binary, started per test
//! in a temporary directory on free ports; the test is skipped when the
//! binary is missing): dual-stack acquisition writes flannel's key and JSON
//! byte for byte, the watch carries peers' IPv6 subnets and attributes, a
//! renewal keeps the IPv6 part, and a restart reuses the pair; an IPv6-only
//! lease is flannel's `0.0.0.0-0&<v6>-64` key with `PublicIP` 0.0.0.0 and no
//! `BackendData`, found again by `PublicIPv6`, watched, renewed and revoked.

#![allow(unreachable_pub)]
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use weft::core::config::NetConfig;
use weft::core::lease::{LeaseAttrs, LeaseEvent, SubnetKey, VxlanBackendData};
use weft::core::mac::MacAddr;
use weft::subnet::etcd::{DEFAULT_PREFIX, EtcdOptions, EtcdStore};
use weft::subnet::{AcquireRequest, OwnAddress, RenewPolicy, StoreUpdate};

struct Etcd {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh etcd, or `None` (the test is skipped) when there is no binary.
async fn etcd() -> Option<Etcd> {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .args(["--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("skipping: cannot start etcd ({e})");
            return None;
        }
    };
    let etcd = Etcd {
        child,
        url,
        _dir: dir,
    };
    for _ in 0..100 {
        if let Ok(mut c) = etcd_client::Client::connect([&etcd.url], None).await
            && c.get("x", None).await.is_ok()
        {
            return Some(etcd);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd did not come up at {}", etcd.url);
}

const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/56","Backend":{"Type":"vxlan"}}"#;

fn dual_attrs(last: u8) -> LeaseAttrs {
    let mut a = LeaseAttrs::vxlan(
        Ipv4Addr::new(192, 168, 0, last),
        &VxlanBackendData {
            vni: 1,
            vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, last]),
        },
    );
    a.public_ipv6 = Some(format!("fd00::{last}").parse().unwrap());
    a.backend_v6_data = Some(
        VxlanBackendData {
            vni: 1,
            vtep_mac: MacAddr([0x0e, 6, 0, 0, 0, last]),
        }
        .to_json(),
    );
    a
}

fn store(etcd: &Etcd, ttl: Duration) -> Arc<EtcdStore> {
    let options = EtcdOptions {
        endpoints: vec![etcd.url.clone()],
        prefix: DEFAULT_PREFIX.into(),
        lease_ttl: ttl,
        ..EtcdOptions::default()
    };
    Arc::new(EtcdStore::open(options, Arc::default()).unwrap())
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<StoreUpdate>) -> StoreUpdate {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no store update within 10 s")
        .expect("the store task stopped")
}

#[tokio::test]
async fn dual_stack_leases_in_a_real_etcd() {
    let Some(etcd) = etcd().await else { return };
    let mut client = etcd_client::Client::connect([&etcd.url], None)
        .await
        .unwrap();
    client
        .put(format!("{DEFAULT_PREFIX}/config"), DUAL, None)
        .await
        .unwrap();
    let s = store(&etcd, Duration::from_secs(6));
    let config: NetConfig = s.network_config().await.unwrap();
    assert!(config.enable_ipv6);
    let req = |last| AcquireRequest {
        attrs: dual_attrs(last),
        previous_subnet: None,
        previous_ipv6_subnet: None,
    };
    let own = s.acquire(&config, &req(1)).await.unwrap();
    let v6 = own.ipv6_subnet.expect("a dual-stack lease");
    assert!(weft::core::allocate::fits(&config, own.subnet_key()));
    // flannel's key and JSON, byte for byte, on an etcd lease.
    let key = format!("{DEFAULT_PREFIX}/subnets/{}", own.key());
    assert_eq!(
        own.key(),
        format!("{}-24&{}-64", own.subnet.addr(), v6.addr())
    );
    let got = client.get(key.clone(), None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!(
        kv.value_str().unwrap(),
        r#"{"PublicIP":"192.168.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:06:00:00:00:01"}}"#
    );
    assert_ne!(kv.lease(), 0, "attached to an etcd lease");
    // A restart reuses the pair (same key, no second key).
    let again = s.acquire(&config, &req(1)).await.unwrap();
    assert_eq!(again.subnet_key(), own.subnet_key());
    let all = client
        .get(
            format!("{DEFAULT_PREFIX}/subnets/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(all.kvs().len(), 1);

    // The watch: a peer's dual-stack lease arrives with its v6 parts; the own
    // lease is renewed (TTL 6 s, margin 4 s) with its v6 part kept.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let renew = RenewPolicy {
        margin: Duration::from_secs(4),
        retry: Duration::from_secs(1),
    };
    let task = s.clone().spawn(again.clone(), renew, tx);
    match next(&mut rx).await {
        StoreUpdate::Snapshot(leases) => {
            assert_eq!(leases.len(), 1);
            assert_eq!(leases[0].subnet_key(), own.subnet_key());
            assert_eq!(leases[0].attrs, dual_attrs(1));
        }
        other => panic!("{other:?}"),
    }
    let peer = s.acquire(&config, &req(2)).await.unwrap();
    assert_ne!(peer.subnet, own.subnet);
    assert_ne!(peer.ipv6_subnet, own.ipv6_subnet);
    let mut saw_peer = false;
    let mut saw_renewal = false;
    while !(saw_peer && saw_renewal) {
        match next(&mut rx).await {
            StoreUpdate::Events(events) => {
                for e in events {
                    match e {
                        LeaseEvent::Added(l) if l.subnet == peer.subnet => {
                            assert_eq!(l.ipv6_subnet, peer.ipv6_subnet);
                            assert_eq!(l.attrs, dual_attrs(2));
                            saw_peer = true;
                        }
                        // The own key's renewal put, and the peer's renewals.
                        LeaseEvent::Added(_) => {}
                        other => panic!("{other:?}"),
                    }
                }
            }
            StoreUpdate::Renewed(l) => {
                assert_eq!(l.subnet_key(), own.subnet_key());
                assert_eq!(l.attrs, dual_attrs(1));
                saw_renewal = true;
            }
            other => panic!("{other:?}"),
        }
    }
    // The peer's key deleted: removed by its whole dual-stack key.
    client
        .delete(format!("{DEFAULT_PREFIX}/subnets/{}", peer.key()), None)
        .await
        .unwrap();
    loop {
        if let StoreUpdate::Events(events) = next(&mut rx).await
            && events.contains(&LeaseEvent::Removed(SubnetKey {
                subnet: peer.subnet,
                ipv6_subnet: peer.ipv6_subnet,
            }))
        {
            break;
        }
    }
    task.abort();
}

const V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan"}}"#;

/// Node `last`'s IPv6-only attributes, as the agent sends them: PublicIP
/// 0.0.0.0 (an IPv6-only lease has no IPv4 half), no BackendData.
fn v6_only_attrs(last: u8) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: Ipv4Addr::UNSPECIFIED,
        backend_data: None,
        ..dual_attrs(last)
    }
}

#[tokio::test]
async fn ipv6_only_leases_in_a_real_etcd() {
    let Some(etcd) = etcd().await else { return };
    let mut client = etcd_client::Client::connect([&etcd.url], None)
        .await
        .unwrap();
    client
        .put(format!("{DEFAULT_PREFIX}/config"), V6_ONLY, None)
        .await
        .unwrap();
    let s = store(&etcd, Duration::from_secs(6));
    let config: NetConfig = s.network_config().await.unwrap();
    assert!(config.ipv6_only());
    let req = |last| AcquireRequest {
        attrs: v6_only_attrs(last),
        previous_subnet: None,
        previous_ipv6_subnet: None,
    };
    let own = s.acquire(&config, &req(1)).await.unwrap();
    assert!(!own.has_ipv4());
    let v6 = own.ipv6_subnet.expect("an IPv6 subnet");
    assert!(weft::core::allocate::fits(&config, own.subnet_key()));
    // flannel's key (its zero IP4Net, then the IPv6 subnet) and JSON, byte
    // for byte, on an etcd lease.
    assert_eq!(own.key(), format!("0.0.0.0-0&{}-64", v6.addr()));
    let key = format!("{DEFAULT_PREFIX}/subnets/{}", own.key());
    let got = client.get(key.clone(), None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!(
        kv.value_str().unwrap(),
        r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:06:00:00:00:01"}}"#
    );
    assert_ne!(kv.lease(), 0, "attached to an etcd lease");
    // A restart finds it by PublicIPv6 and reuses it.
    let found = s
        .find_own(OwnAddress::Ipv6("fd00::1".parse().unwrap()))
        .await
        .unwrap()
        .expect("the own lease, by PublicIPv6");
    assert_eq!(found.subnet_key(), own.subnet_key());
    assert_eq!(
        s.find_own(OwnAddress::Ipv6("fd00::2".parse().unwrap()))
            .await
            .unwrap(),
        None,
        "not another node's (every IPv6-only lease has PublicIP 0.0.0.0)"
    );
    let again = s.acquire(&config, &req(1)).await.unwrap();
    assert_eq!(again.subnet_key(), own.subnet_key());

    // The watch and renewal (TTL 6 s, margin 4 s); a second node, with the
    // same PublicIP 0.0.0.0, gets a distinct IPv6 subnet.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let renew = RenewPolicy {
        margin: Duration::from_secs(4),
        retry: Duration::from_secs(1),
    };
    let task = s.clone().spawn(again.clone(), renew, tx);
    match next(&mut rx).await {
        StoreUpdate::Snapshot(leases) => {
            assert_eq!(leases.len(), 1);
            assert_eq!(leases[0].subnet_key(), own.subnet_key());
            assert_eq!(leases[0].attrs, v6_only_attrs(1));
        }
        other => panic!("{other:?}"),
    }
    let peer = s.acquire(&config, &req(2)).await.unwrap();
    assert!(!peer.has_ipv4());
    assert_ne!(peer.ipv6_subnet, own.ipv6_subnet);
    let all = client
        .get(
            format!("{DEFAULT_PREFIX}/subnets/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(all.kvs().len(), 2, "two keys, one per node");
    let mut saw_peer = false;
    let mut saw_renewal = false;
    while !(saw_peer && saw_renewal) {
        match next(&mut rx).await {
            StoreUpdate::Events(events) => {
                for e in events {
                    match e {
                        LeaseEvent::Added(l) if l.subnet_key() == peer.subnet_key() => {
                            assert_eq!(l.attrs, v6_only_attrs(2));
                            saw_peer = true;
                        }
                        LeaseEvent::Added(_) => {}
                        other => panic!("{other:?}"),
                    }
                }
            }
            StoreUpdate::Renewed(l) => {
                assert_eq!(l.subnet_key(), own.subnet_key());
                assert_eq!(l.attrs, v6_only_attrs(1));
                saw_renewal = true;
            }
            other => panic!("{other:?}"),
        }
    }
    // The peer's key deleted: removed by its IPv6-only key.
    client
        .delete(format!("{DEFAULT_PREFIX}/subnets/{}", peer.key()), None)
        .await
        .unwrap();
    loop {
        if let StoreUpdate::Events(events) = next(&mut rx).await
            && events.contains(&LeaseEvent::Removed(peer.subnet_key()))
        {
            break;
        }
    }
    // The own key deleted: revoked.
    client.delete(key, None).await.unwrap();
    loop {
        match next(&mut rx).await {
            StoreUpdate::OwnLeaseRevoked(why) => {
                assert!(why.contains(&own.key()), "{why}");
                break;
            }
            StoreUpdate::Events(_) | StoreUpdate::Renewed(_) => {}
            other => panic!("{other:?}"),
        }
    }
    task.abort();
}
