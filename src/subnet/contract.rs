//! What every store does for the agent, whatever its medium: the request it
//! acquires a lease for, the updates it sends while it runs, and when it
//! renews.

use super::error::StoreError;
use crate::core::config::NetConfig;
use crate::core::lease::{Lease, LeaseAttrs};
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::Ipv4Addr;
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

/// How a store recognises this node's lease from an earlier run: by
/// `PublicIP`, or in an IPv6-only network (`EnableIPv4: false`, where every
/// lease may carry `PublicIP` 0.0.0.0) by `PublicIPv6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnAddress {
    /// The node's `PublicIP`.
    Ipv4(Ipv4Addr),
    /// The node's `PublicIPv6` (IPv6-only networks).
    Ipv6(std::net::Ipv6Addr),
}

impl OwnAddress {
    /// Whether `lease` is the one this node published.
    pub fn owns(&self, lease: &Lease) -> bool {
        match *self {
            OwnAddress::Ipv4(ip) => lease.has_ipv4() && lease.attrs.public_ip == ip,
            OwnAddress::Ipv6(ip) => !lease.has_ipv4() && lease.attrs.public_ipv6 == Some(ip),
        }
    }
}

/// What the agent asks for when acquiring a lease.
///
/// With `EnableIPv6` the attributes carry the node's IPv6 VTEP too
/// (`attrs.public_ipv6`, `attrs.backend_v6_data`), and the lease returned
/// has an `ipv6_subnet`.
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    /// The attributes to publish: this node's public IP(s) and VTEP(s).
    pub attrs: LeaseAttrs,
    /// The subnet of the previous `subnet.env` (`FLANNEL_SUBNET`), reused if
    /// still free (flannel's rule).
    pub previous_subnet: Option<Ipv4Net>,
    /// The IPv6 subnet of the previous `subnet.env` (`FLANNEL_IPV6_SUBNET`):
    /// with `EnableIPv6`, the previous pair is reused only with it.
    pub previous_ipv6_subnet: Option<Ipv6Net>,
}

impl AcquireRequest {
    /// The request as [`crate::core::allocate::plan`] takes it.
    pub fn request(&self) -> crate::core::allocate::Request {
        crate::core::allocate::Request {
            public_ip: self.attrs.public_ip,
            previous_subnet: self.previous_subnet,
            previous_ipv6_subnet: self.previous_ipv6_subnet,
            vtep_mac: self.attrs.vxlan_data().ok().map(|d| d.vtep_mac),
        }
    }

    /// Refuses a request the config cannot serve: an IPv6-only config, or
    /// IPv6 on without the node's public IPv6 (flanneld stops earlier,
    /// finding no IPv6 address on the interface).
    pub fn check(&self, config: &NetConfig) -> Result<(), StoreError> {
        if !config.enable_ipv4 || config.network.is_none() {
            return Err(StoreError::NoIpv4Network);
        }
        if config.enable_ipv6 && self.attrs.public_ipv6.is_none() {
            return Err(StoreError::Ipv6Request {
                reason: "EnableIPv6 is set but the lease request has no public IPv6 address: give the interface an IPv6 address (or set --public-ipv6), or turn EnableIPv6 off".into(),
            });
        }
        Ok(())
    }
}

/// How to renew: flannel renews `margin` before expiry and retries every minute.
#[derive(Debug, Clone, Copy)]
pub struct RenewPolicy {
    /// How long before expiry to renew.
    pub margin: std::time::Duration,
    /// How long to wait after a failed renewal.
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
