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
/// has an `ipv6_subnet`. In an IPv6-only network (`EnableIPv4: false`) they
/// carry only that: `public_ip` 0.0.0.0, no `backend_data`; the lease
/// returned is on [`NO_IPV4_SUBNET`](crate::core::lease::NO_IPV4_SUBNET),
/// and only `previous_ipv6_subnet` is looked at.
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
            public_ipv6: self.attrs.public_ipv6,
            previous_subnet: self.previous_subnet,
            previous_ipv6_subnet: self.previous_ipv6_subnet,
            // An IPv6-only lease has no BackendData: its VtepMAC is the IPv6 one.
            vtep_mac: crate::core::allocate::vtep_mac(&self.attrs),
        }
    }

    /// Refuses a request the config cannot serve: no family enabled, IPv4 on
    /// without a `Network`, IPv6 on without an `IPv6Network` or without the
    /// node's public IPv6 (flanneld stops earlier, finding no IPv6 address
    /// on the interface), or IPv6-only without `BackendV6Data`.
    pub fn check(&self, config: &NetConfig) -> Result<(), StoreError> {
        if !config.enable_ipv4 && !config.enable_ipv6 {
            return Err(StoreError::NoAddressFamily);
        }
        if config.enable_ipv4 && config.network.is_none() {
            return Err(StoreError::NoIpv4Network);
        }
        if config.enable_ipv6 && config.ipv6_network.is_none() {
            return Err(StoreError::NoIpv6Network);
        }
        if config.enable_ipv6 && self.attrs.public_ipv6.is_none() {
            let reason = match config.enable_ipv4 {
                true => {
                    "EnableIPv6 is set but the lease request has no public IPv6 address: give the interface an IPv6 address (or set --public-ipv6), or turn EnableIPv6 off"
                }
                false => {
                    "the network is IPv6-only (EnableIPv4 false) but the lease request has no public IPv6 address: give the interface an IPv6 address (or set --public-ipv6)"
                }
            };
            return Err(StoreError::Ipv6Request {
                reason: reason.into(),
            });
        }
        if !config.enable_ipv4 && self.attrs.backend_v6_data.is_none() {
            return Err(StoreError::Ipv6Request {
                reason: "the network is IPv6-only (EnableIPv4 false) but the lease request has no BackendV6Data: the IPv6 VTEP (its VNI and VtepMAC) is all peers can reach".into(),
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
    use crate::core::lease::VxlanBackendData;
    use crate::core::mac::MacAddr;

    /// What the agent sends in an IPv6-only network.
    fn v6_only_request() -> AcquireRequest {
        AcquireRequest {
            attrs: LeaseAttrs {
                public_ip: Ipv4Addr::UNSPECIFIED,
                public_ipv6: Some("fd00:99::1".parse().unwrap()),
                backend_type: "vxlan".into(),
                backend_data: None,
                backend_v6_data: Some(
                    VxlanBackendData {
                        vni: 1,
                        vtep_mac: MacAddr([0x0e, 6, 0, 0, 0, 1]),
                    }
                    .to_json(),
                ),
            },
            previous_subnet: None,
            previous_ipv6_subnet: Some("fd10:244:0:3::1/64".parse().unwrap()),
        }
    }

    const V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan"}}"#;

    #[test]
    fn ipv6_only_requests_need_a_public_ipv6_and_backend_v6_data() {
        let config = NetConfig::parse(V6_ONLY).unwrap();
        let req = v6_only_request();
        req.check(&config).unwrap();
        assert_eq!(
            req.attrs.to_json(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:99::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:06:00:00:00:01"}}"#
        );
        // Planning sees the IPv6 address and the IPv6 VtepMAC.
        let r = req.request();
        assert_eq!(r.public_ipv6, req.attrs.public_ipv6);
        assert_eq!(r.vtep_mac, Some(MacAddr([0x0e, 6, 0, 0, 0, 1])));
        let mut no_ip = req.clone();
        no_ip.attrs.public_ipv6 = None;
        let err = no_ip.check(&config).unwrap_err().to_string();
        assert!(
            err.contains("IPv6-only") && err.contains("no public IPv6"),
            "{err}"
        );
        let mut no_data = req.clone();
        no_data.attrs.backend_v6_data = None;
        let err = no_data.check(&config).unwrap_err().to_string();
        assert!(err.contains("no BackendV6Data"), "{err}");
        // No IPv6Network, no family at all: the config's fault, said so.
        let mut no_net = config.clone();
        no_net.ipv6_network = None;
        assert!(matches!(req.check(&no_net), Err(StoreError::NoIpv6Network)));
        let mut neither = config.clone();
        neither.enable_ipv6 = false;
        let err = req.check(&neither).unwrap_err();
        assert!(matches!(err, StoreError::NoAddressFamily));
        assert!(err.to_string().contains("neither IPv4 nor IPv6"), "{err}");
        // IPv4 on without a Network says how to go IPv6-only.
        let v4 = NetConfig::parse(r#"{"Backend":{"Type":"vxlan"}}"#).unwrap();
        let err = req.check(&v4).unwrap_err().to_string();
        assert!(err.contains("\"EnableIPv4\": false"), "{err}");
    }

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
