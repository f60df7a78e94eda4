//! What the agent knows about itself, shared by the control loop (writer),
//! the status socket and the metrics endpoint (readers).

use crate::core::mac::MacAddr;
use crate::dataplane::Shared;
use crate::dataplane::counters::CounterSnapshot;
use crate::dataplane::offload::ActiveOffloads;
use crate::subnet::{StoreStats, StoreStatsSnapshot};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::SystemTime;

/// Seconds since the Unix epoch.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct StoreInfo {
    pub kind: String,
    pub endpoint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub interface: String,
    pub interface_addr: Ipv4Addr,
    pub public_ip: Ipv4Addr,
    pub interface_mtu: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OwnLease {
    pub subnet: Ipv4Net,
    pub vtep_mac: MacAddr,
    pub vni: u32,
    pub port: u16,
    pub network: Ipv4Net,
    /// Unix seconds; `None` for a lease that does not expire.
    pub expires: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// TCP segments per TSO super-frame, when weftd capped it to one UDP GSO send.
    #[serde(default)]
    pub gso_max_segs: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    /// Unix seconds when this lease (with these attributes) was first seen.
    pub since: u64,
    pub route: bool,
    pub route_error: Option<String>,
}

/// The part of the status the control loop writes.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct StatusInfo {
    pub store: StoreInfo,
    pub node: Option<NodeInfo>,
    pub lease: Option<OwnLease>,
    pub device: Option<DeviceInfo>,
    pub peers: BTreeMap<Ipv4Net, PeerStatus>,
    pub source_ports: Vec<u16>,
}

/// Lease events the agent acted on, by type.
#[derive(Debug, Default)]
pub struct LeaseEventCounts {
    pub added: AtomicU64,
    pub changed: AtomicU64,
    pub removed: AtomicU64,
    pub ignored: AtomicU64,
}

/// Shared agent state.
#[derive(Debug)]
pub struct AgentState {
    pub started: SystemTime,
    pub version: &'static str,
    pub info: RwLock<StatusInfo>,
    pub store: Arc<StoreStats>,
    pub dataplane: OnceLock<Arc<Shared>>,
    pub ready: AtomicBool,
    pub lease_events: LeaseEventCounts,
}

/// Everything `weftd status --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub now: u64,
    pub ready: bool,
    #[serde(flatten)]
    pub info: StatusInfo,
    pub store_stats: StoreStatsSnapshotOwned,
    pub counters: Option<CounterSnapshotOwned>,
    pub offloads: BTreeMap<String, bool>,
    pub lease_events: BTreeMap<String, u64>,
    /// Frames per dataplane worker: `[encapsulated, decapsulated]`.
    #[serde(default)]
    pub workers: Vec<[u64; 2]>,
    /// Each worker runs a TX and an RX thread (`split_directions`).
    #[serde(default)]
    pub split_directions: bool,
    /// How received inner checksums are checked: "verified", "outer-covered
    /// or verified" (`trust_outer_checksum` in effect) or "not verified".
    #[serde(default)]
    pub inner_checksums: String,
}

/// [`StoreStatsSnapshot`] in a form that also deserialises (for the status client).
pub type StoreStatsSnapshotOwned = serde_json::Value;
/// [`CounterSnapshot`] likewise.
pub type CounterSnapshotOwned = serde_json::Value;

impl AgentState {
    pub fn new(store: Arc<StoreStats>) -> Arc<AgentState> {
        Arc::new(AgentState {
            started: SystemTime::now(),
            version: env!("CARGO_PKG_VERSION"),
            info: RwLock::new(StatusInfo::default()),
            store,
            dataplane: OnceLock::new(),
            ready: AtomicBool::new(false),
            lease_events: LeaseEventCounts::default(),
        })
    }

    pub fn info(&self) -> std::sync::RwLockReadGuard<'_, StatusInfo> {
        self.info.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn update(&self, f: impl FnOnce(&mut StatusInfo)) {
        let mut guard = self.info.write().unwrap_or_else(|p| p.into_inner());
        f(&mut guard);
    }

    pub fn counters(&self) -> Option<CounterSnapshot> {
        self.dataplane.get().map(|d| d.counters.snapshot())
    }

    pub fn store_stats(&self) -> StoreStatsSnapshot {
        self.store.snapshot()
    }

    /// The offloads in use now (none before the dataplane is up).
    pub fn offloads(&self) -> ActiveOffloads {
        self.dataplane
            .get()
            .map(|d| d.active_offloads())
            .unwrap_or_default()
    }

    pub fn report(&self) -> StatusReport {
        let now = SystemTime::now();
        let offloads = self
            .offloads()
            .list()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        let e = &self.lease_events;
        let lease_events = [
            ("added", e.added.load(Relaxed)),
            ("changed", e.changed.load(Relaxed)),
            ("removed", e.removed.load(Relaxed)),
            ("ignored", e.ignored.load(Relaxed)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        StatusReport {
            version: self.version.to_owned(),
            pid: std::process::id(),
            uptime_seconds: now
                .duration_since(self.started)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            now: unix_secs(now),
            ready: self.ready.load(Relaxed),
            info: self.info().clone(),
            store_stats: serde_json::to_value(self.store_stats()).unwrap_or_default(),
            counters: self
                .counters()
                .map(|c| serde_json::to_value(c).unwrap_or_default()),
            offloads,
            lease_events,
            workers: self
                .dataplane
                .get()
                .map(|d| {
                    d.counters
                        .per_worker()
                        .into_iter()
                        .map(|(e, d)| [e, d])
                        .collect()
                })
                .unwrap_or_default(),
            split_directions: self.dataplane.get().is_some_and(|d| d.split_directions),
            inner_checksums: match self.dataplane.get() {
                None => String::new(),
                Some(d) if !d.verify_checksums => "not verified".into(),
                Some(d) if d.outer_checksum_trusted => "outer-covered or verified".into(),
                Some(_) => "verified".into(),
            },
        }
    }
}
