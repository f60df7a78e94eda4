//! Lease stores ("subnet managers" in flannel): where a node's subnet lease
//! comes from and where it learns about the other nodes' leases.
//!
//! Every store does the same four things for the agent: read the network
//! config, find this node's previous lease (to keep its VtepMAC), acquire a
//! lease, and then run in the background — listing and watching the leases,
//! renewing its own — sending [`StoreUpdate`]s to the agent.

pub mod etcd;
pub mod kube;
pub mod local;

use crate::core::config::{ConfigError, NetConfig};
use crate::core::lease::{Lease, LeaseAttrs, LeaseError};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;
use tokio::sync::mpsc;

/// What a running store tells the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreUpdate {
    /// The complete set of leases (first list, or relist after a desync).
    Snapshot(Vec<Lease>),
    /// Changes since the last update.
    Events(Vec<crate::core::lease::LeaseEvent>),
    /// This node's lease was renewed; it now expires at the given time.
    Renewed(Lease),
    /// This node's lease was deleted by someone else: flannel exits so its supervisor restarts it.
    OwnLeaseRevoked(String),
}

/// Why a store operation failed. `kind()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    ConfigMissing(String),
    #[error("invalid network config in {source_name}: {error}")]
    ConfigInvalid {
        source_name: String,
        #[source]
        error: ConfigError,
    },
    #[error("out of subnets")]
    OutOfSubnets,
    #[error("max retries reached trying to acquire a subnet")]
    TooManyConflicts,
    #[error("lease store unavailable: {0}")]
    Unavailable(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::ConfigMissing(_) => "config_missing",
            StoreError::ConfigInvalid { .. } => "config_invalid",
            StoreError::OutOfSubnets => "out_of_subnets",
            StoreError::TooManyConflicts => "conflict",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Io { .. } => "io",
            StoreError::Other(_) => "other",
        }
    }

    /// Errors worth retrying (the store may come back), as opposed to bad config.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::ConfigMissing(_) | StoreError::Unavailable(_) | StoreError::Io { .. }
        )
    }
}

/// What the agent asks for when acquiring a lease.
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    /// The attributes to publish: this node's public IP and VTEP.
    pub attrs: LeaseAttrs,
    /// The subnet of the previous `subnet.env`, reused if still free (flannel's rule).
    pub previous_subnet: Option<Ipv4Net>,
}

impl AcquireRequest {
    /// The request as [`crate::core::allocate::plan`] takes it.
    pub fn request(&self) -> crate::core::allocate::Request {
        crate::core::allocate::Request {
            public_ip: self.attrs.public_ip,
            previous_subnet: self.previous_subnet,
        }
    }
}

impl From<crate::core::allocate::OutOfSubnets> for StoreError {
    fn from(_: crate::core::allocate::OutOfSubnets) -> StoreError {
        StoreError::OutOfSubnets
    }
}

/// Counters and state every store keeps for metrics and `weftd status`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub connected: AtomicBool,
    pub events_added: AtomicU64,
    pub events_removed: AtomicU64,
    pub snapshots: AtomicU64,
    pub renewals: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    bad_records: Mutex<BTreeMap<&'static str, u64>>,
    last_event: Mutex<Option<SystemTime>>,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`StoreStats`] for display.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreStatsSnapshot {
    pub connected: bool,
    pub events_added: u64,
    pub events_removed: u64,
    pub snapshots: u64,
    pub renewals: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub bad_records: BTreeMap<&'static str, u64>,
    /// Seconds since the Unix epoch.
    pub last_event: Option<u64>,
    pub last_error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StoreStats {
    pub fn error(&self, error: &StoreError) {
        *lock(&self.errors).entry(error.kind()).or_default() += 1;
        *lock(&self.last_error) = Some(error.to_string());
    }

    pub fn bad_record(&self, error: &LeaseError) {
        self.bad_record_kind(error.kind());
    }

    /// Counts a skipped record under `kind` (stores whose records are not lease JSON).
    pub fn bad_record_kind(&self, kind: &'static str) {
        *lock(&self.bad_records).entry(kind).or_default() += 1;
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Relaxed);
        if connected {
            *lock(&self.last_error) = None;
        }
    }

    pub fn event(&self, now: SystemTime) {
        *lock(&self.last_event) = Some(now);
    }

    pub fn snapshot(&self) -> StoreStatsSnapshot {
        StoreStatsSnapshot {
            connected: self.connected.load(Relaxed),
            events_added: self.events_added.load(Relaxed),
            events_removed: self.events_removed.load(Relaxed),
            snapshots: self.snapshots.load(Relaxed),
            renewals: self.renewals.load(Relaxed),
            errors: lock(&self.errors).clone(),
            bad_records: lock(&self.bad_records).clone(),
            last_event: lock(&self.last_event)
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            last_error: lock(&self.last_error).clone(),
        }
    }
}

/// How to renew: flannel renews `margin` before expiry and retries every minute.
#[derive(Debug, Clone, Copy)]
pub struct RenewPolicy {
    pub margin: std::time::Duration,
    pub retry: std::time::Duration,
}

impl Default for RenewPolicy {
    fn default() -> Self {
        RenewPolicy {
            margin: std::time::Duration::from_secs(60 * 60),
            retry: std::time::Duration::from_secs(60),
        }
    }
}

/// When to renew a lease expiring at `expiration`: `margin` before, or now.
pub fn renew_at(
    expiration: Option<SystemTime>,
    margin: std::time::Duration,
    now: SystemTime,
) -> SystemTime {
    match expiration {
        Some(exp) => exp.checked_sub(margin).filter(|t| *t > now).unwrap_or(now),
        None => now + std::time::Duration::from_secs(24 * 3600),
    }
}

/// A channel end the running store sends on.
pub type UpdateSender = mpsc::Sender<StoreUpdate>;

/// The public IP of a lease, for logs.
pub fn describe(lease: &Lease) -> (Ipv4Net, Ipv4Addr) {
    (lease.subnet, lease.attrs.public_ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_time() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        let exp = now + std::time::Duration::from_secs(7200);
        assert_eq!(
            renew_at(Some(exp), std::time::Duration::from_secs(3600), now),
            now + std::time::Duration::from_secs(3600)
        );
        assert_eq!(
            renew_at(Some(now), std::time::Duration::from_secs(3600), now),
            now
        );
    }
}

/// The lease store this agent uses.
#[derive(Debug, Clone)]
pub enum Store {
    Local(std::sync::Arc<local::LocalStore>),
    Etcd(std::sync::Arc<etcd::EtcdStore>),
    Kube(std::sync::Arc<self::kube::KubeStore>),
}

impl Store {
    /// `(kind, endpoint)` for status and logs.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            Store::Local(s) => ("local", s.dir().display().to_string()),
            Store::Etcd(s) => ("etcd", s.describe()),
            Store::Kube(s) => ("kube", format!("{} (node {})", s.endpoint(), s.node_name())),
        }
    }

    /// Whether a missing or unreadable config should be retried (flannel retries
    /// the etcd config key every second; a local file is the operator's to fix).
    pub fn retries_config(&self) -> bool {
        match self {
            Store::Local(_) | Store::Kube(_) => false,
            Store::Etcd(_) => true,
        }
    }

    pub async fn network_config(&self) -> Result<NetConfig, StoreError> {
        match self {
            Store::Local(s) => s.network_config().await,
            Store::Etcd(s) => s.network_config().await,
            Store::Kube(s) => s.network_config().await,
        }
    }

    pub async fn find_own(&self, public_ip: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
        match self {
            Store::Local(s) => s.find_own(public_ip, SystemTime::now()).await,
            Store::Etcd(s) => s.find_own(public_ip).await,
            Store::Kube(s) => s.find_own(public_ip).await,
        }
    }

    /// A public IP the store holds for this node, replacing `--public-ip`
    /// (flannel's `GetStoredPublicIP`: the `node-public-ip` annotation).
    pub async fn stored_public_ip(&self) -> Result<Option<Ipv4Addr>, StoreError> {
        match self {
            Store::Local(_) | Store::Etcd(_) => Ok(None),
            Store::Kube(s) => s.stored_public_ip().await,
        }
    }

    pub async fn acquire(
        &self,
        config: &NetConfig,
        req: &AcquireRequest,
    ) -> Result<Lease, StoreError> {
        match self {
            Store::Local(s) => s.acquire(config, req, SystemTime::now()).await,
            Store::Etcd(s) => s.acquire(config, req).await,
            Store::Kube(s) => s.acquire(config, req).await,
        }
    }

    /// Runs the store in the background: list, watch, renew.
    pub fn spawn(
        &self,
        own: Lease,
        renew: RenewPolicy,
        tx: UpdateSender,
    ) -> tokio::task::JoinHandle<()> {
        match self {
            Store::Local(s) => s.clone().spawn(own, renew, tx),
            Store::Etcd(s) => s.clone().spawn(own, renew, tx),
            Store::Kube(s) => s.clone().spawn(tx),
        }
    }

    /// Called once the node is ready (`subnet.env` written): flannel's
    /// `CompleteLease` (Kubernetes: `NetworkUnavailable=False`).
    pub fn complete(&self, lease: &Lease) {
        match self {
            Store::Local(_) | Store::Etcd(_) => {}
            Store::Kube(s) => s.complete(lease),
        }
    }
}
