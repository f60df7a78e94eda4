//! What the agent knows about itself, shared by the control loop (writer),
//! the status socket and the metrics endpoint (readers).

use crate::core::mac::MacAddr;
use crate::dataplane::Shared;
use crate::dataplane::counters::CounterSnapshot;
use crate::dataplane::offload::ActiveOffloads;
use crate::subnet::{StoreStats, StoreStatsSnapshot};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// Seconds since the Unix epoch.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The lease store in use.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct StoreInfo {
    /// `local`, `etcd` or `kube`.
    pub kind: String,
    /// Its directory, endpoints or API server.
    pub endpoint: String,
}

/// The interface VXLAN traffic uses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its name.
    pub interface: String,
    /// Its address.
    pub interface_addr: Ipv4Addr,
    /// The public IP other nodes send to.
    pub public_ip: Ipv4Addr,
    /// Its MTU.
    pub interface_mtu: u32,
}

/// This node's lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OwnLease {
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// The VtepMAC.
    pub vtep_mac: MacAddr,
    /// The VNI.
    pub vni: u32,
    /// The VXLAN port.
    pub port: u16,
    /// The cluster network.
    pub network: Ipv4Net,
    /// Unix seconds; `None` for a lease that does not expire.
    pub expires: Option<u64>,
}

/// The TAP device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Its MTU.
    pub mtu: u32,
    /// TCP segments per TSO super-frame, when weftd capped it to one UDP GSO send.
    #[serde(default)]
    pub gso_max_segs: Option<u32>,
    /// Times weftd recreated the device after someone deleted it.
    #[serde(default)]
    pub recreated: u64,
    /// Times weftd brought the device back up after someone set it down.
    #[serde(default)]
    pub brought_up: u64,
}

/// A peer as `weftd status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// Its public IP.
    pub public_ip: Ipv4Addr,
    /// Its VtepMAC.
    pub vtep_mac: MacAddr,
    /// Unix seconds when this lease (with these attributes) was first seen.
    pub since: u64,
    /// Its route is programmed.
    pub route: bool,
    /// Why it is not.
    pub route_error: Option<String>,
    /// The kind of route programmed: `vxlan` (through the VTEP device) or
    /// `direct` (DirectRouting: via the peer's public IP on the underlay).
    #[serde(default)]
    pub route_kind: Option<String>,
    /// The route's gateway: `S.0` for `vxlan`, the public IP for `direct`.
    #[serde(default)]
    pub route_via: Option<Ipv4Addr>,
    /// The route's device, for `vxlan`.
    #[serde(default)]
    pub route_dev: Option<String>,
}

/// The IPv6 half of a dual-stack node (`EnableIPv6`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ipv6Status {
    /// The underlay interface's IPv6 address the IPv6 VTEP listens on.
    pub interface_addr: Ipv6Addr,
    /// The public IPv6 address other nodes send to (`PublicIPv6`).
    pub public_ip: Ipv6Addr,
    /// The cluster's `IPv6Network`.
    pub network: Ipv6Net,
    /// This node's IPv6 subnet.
    pub subnet: Ipv6Net,
    /// The VtepMAC of `flannel-v6.<VNI>` (`BackendV6Data`).
    pub vtep_mac: MacAddr,
    /// The device `flannel-v6.<VNI>`.
    pub device: DeviceInfo,
    /// The peers' IPv6 halves, by IPv6 subnet.
    pub peers: BTreeMap<Ipv6Net, PeerV6Status>,
}

/// A peer's IPv6 VTEP as `weftd status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerV6Status {
    /// The peer's IPv4 subnet (its lease).
    pub subnet: Ipv4Net,
    /// Its public IPv6 address.
    pub public_ip: Ipv6Addr,
    /// Its IPv6 VtepMAC.
    pub vtep_mac: MacAddr,
    /// Its route (`S6 via S6::0 dev flannel-v6.<VNI> onlink`) is programmed.
    pub route: bool,
    /// Why it is not.
    pub route_error: Option<String>,
    /// `vxlan` (through `flannel-v6.<VNI>`) or `direct` (DirectRouting).
    #[serde(default)]
    pub route_kind: Option<String>,
    /// `S6::0` for `vxlan`, the public IPv6 address for `direct`.
    #[serde(default)]
    pub route_via: Option<Ipv6Addr>,
}

/// The part of the status the control loop writes.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct StatusInfo {
    /// The store in use.
    pub store: StoreInfo,
    /// The interface in use.
    pub node: Option<NodeInfo>,
    /// The lease.
    pub lease: Option<OwnLease>,
    /// The TAP device.
    pub device: Option<DeviceInfo>,
    /// The peers, by subnet.
    pub peers: BTreeMap<Ipv4Net, PeerStatus>,
    /// The outer UDP source ports in use.
    pub source_ports: Vec<u16>,
    /// The IPv6 half, in dual stack.
    #[serde(default)]
    pub ipv6: Option<Ipv6Status>,
}

/// Lease events the agent acted on, by type.
#[derive(Debug, Default)]
pub struct LeaseEventCounts {
    /// Leases added.
    pub added: AtomicU64,
    /// Leases whose public IP or VtepMAC changed.
    pub changed: AtomicU64,
    /// Leases removed.
    pub removed: AtomicU64,
    /// Leases the vxlan backend cannot use.
    pub ignored: AtomicU64,
}

/// Shared agent state.
#[derive(Debug)]
pub struct AgentState {
    /// When the agent started.
    pub started: SystemTime,
    /// weft's version.
    pub version: &'static str,
    /// What the control loop last wrote.
    pub info: RwLock<StatusInfo>,
    /// The store's counters.
    pub store: Arc<StoreStats>,
    /// The dataplane, once started (a new one after the device is recreated).
    pub dataplane: DataplaneSlot,
    /// The dataplane of `flannel-v6.<VNI>`, in dual stack.
    pub dataplane_v6: DataplaneSlot,
    /// `subnet.env` is written.
    pub ready: AtomicBool,
    /// Lease events acted on.
    pub lease_events: LeaseEventCounts,
}

/// The running dataplane's shared state, replaced when the device is
/// recreated (its counters then start again from zero).
#[derive(Debug, Default)]
pub struct DataplaneSlot(arc_swap::ArcSwapOption<Shared>);

impl DataplaneSlot {
    /// The dataplane in use, once started.
    pub fn get(&self) -> Option<Arc<Shared>> {
        self.0.load_full()
    }

    /// Makes `shared` the dataplane in use.
    pub fn set(&self, shared: Arc<Shared>) {
        self.0.store(Some(shared));
    }

    /// No dataplane in use (while a device is recreated).
    pub fn clear(&self) {
        self.0.store(None);
    }
}

/// Everything `weftd status --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// weft's version.
    pub version: String,
    /// The agent's process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Unix seconds now.
    pub now: u64,
    /// `subnet.env` is written.
    pub ready: bool,
    /// Store, node, lease, device, peers, source ports.
    #[serde(flatten)]
    pub info: StatusInfo,
    /// The store's counters.
    pub store_stats: StoreStatsSnapshotOwned,
    /// The dataplane's counters, once it runs.
    pub counters: Option<CounterSnapshotOwned>,
    /// Offloads in use, by name.
    pub offloads: BTreeMap<String, bool>,
    /// Lease events acted on, by type.
    pub lease_events: BTreeMap<String, u64>,
    /// Frames per dataplane worker: `[encapsulated, decapsulated]`.
    #[serde(default)]
    pub workers: Vec<[u64; 2]>,
    /// Each worker runs a TX and an RX thread (`split_directions`).
    #[serde(default)]
    pub split_directions: bool,
    /// Microseconds a dataplane thread polls after traffic before it sleeps.
    #[serde(default)]
    pub busy_poll_us: u64,
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
    /// The state of an agent using the store counted in `store`.
    pub fn new(store: Arc<StoreStats>) -> Arc<AgentState> {
        Arc::new(AgentState {
            started: SystemTime::now(),
            version: env!("CARGO_PKG_VERSION"),
            info: RwLock::new(StatusInfo::default()),
            store,
            dataplane: DataplaneSlot::default(),
            dataplane_v6: DataplaneSlot::default(),
            ready: AtomicBool::new(false),
            lease_events: LeaseEventCounts::default(),
        })
    }

    /// What the control loop last wrote.
    pub fn info(&self) -> std::sync::RwLockReadGuard<'_, StatusInfo> {
        self.info.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes what the control loop writes.
    pub fn update(&self, f: impl FnOnce(&mut StatusInfo)) {
        let mut guard = self.info.write().unwrap_or_else(|p| p.into_inner());
        f(&mut guard);
    }

    /// The dataplane's counters, once it runs: in dual stack, both
    /// devices' summed.
    pub fn counters(&self) -> Option<CounterSnapshot> {
        let mut sum = self.dataplane.get().map(|d| d.counters())?;
        if let Some(v6) = self.dataplane_v6.get() {
            sum.merge(&v6.counters());
        }
        Some(sum)
    }

    /// The store's counters.
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

    /// Everything `weftd status` shows, now.
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
            busy_poll_us: self
                .dataplane
                .get()
                .map_or(0, |d| d.busy_poll.as_micros() as u64),
            inner_checksums: match self.dataplane.get() {
                None => String::new(),
                Some(d) if !d.verify_checksums => "not verified".into(),
                Some(d) if d.outer_checksum_trusted => "outer-covered or verified".into(),
                Some(_) => "verified".into(),
            },
        }
    }
}
