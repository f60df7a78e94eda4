//! Lease stores ("subnet managers" in flannel): where a node's subnet lease
//! comes from and where it learns about the other nodes' leases.
//!
//! Every store does the same four things for the agent: read the network
//! config, find this node's previous lease (to keep its VtepMAC), acquire a
//! lease, and then run in the background — listing and watching the leases,
//! renewing its own — sending [`StoreUpdate`]s to the agent.

mod contract;
mod error;
pub mod etcd;
pub mod kube;
pub mod local;
mod stats;

pub use contract::{
    AcquireRequest, OwnAddress, RenewPolicy, StoreUpdate, UpdateSender, describe, renew_at,
};
pub use error::StoreError;
pub use stats::{StoreStats, StoreStatsSnapshot};

use crate::core::config::NetConfig;
use crate::core::lease::Lease;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

/// The lease store this agent uses.
#[derive(Debug, Clone)]
pub enum Store {
    /// The embedded directory store.
    Local(std::sync::Arc<local::LocalStore>),
    /// etcd.
    Etcd(std::sync::Arc<etcd::EtcdStore>),
    /// The Kubernetes API.
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

    /// The network config (net-conf.json, or etcd's config key).
    pub async fn network_config(&self) -> Result<NetConfig, StoreError> {
        match self {
            Store::Local(s) => s.network_config().await,
            Store::Etcd(s) => s.network_config().await,
            Store::Kube(s) => s.network_config().await,
        }
    }

    /// The lease this public IP held, if the store still has it.
    pub async fn find_own(&self, own: OwnAddress) -> Result<Option<Lease>, StoreError> {
        match self {
            Store::Local(s) => s.find_own(own, SystemTime::now()).await,
            Store::Etcd(s) => s.find_own(own).await,
            Store::Kube(s) => s.find_own(own).await,
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

    /// A public IPv6 the store holds for this node, replacing `--public-ipv6`
    /// (flannel's `GetStoredPublicIP`: the `node-public-ipv6` annotation).
    pub async fn stored_public_ipv6(&self) -> Result<Option<Ipv6Addr>, StoreError> {
        match self {
            Store::Local(_) | Store::Etcd(_) => Ok(None),
            Store::Kube(s) => s.stored_public_ipv6().await,
        }
    }

    /// Acquires a lease ([`crate::core::allocate`]; Kubernetes: the node's
    /// pod CIDRs). With `EnableIPv6` the lease has an `ipv6_subnet`.
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
