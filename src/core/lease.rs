//! Leases as flannel stores them: the subnet key (`10.244.3.0-24`) and the
//! attributes JSON, byte-compatible in both directions, plus the VXLAN
//! backend data (`{"VNI":1,"VtepMAC":"…"}`) carried inside it.

use super::json::Fields;
use super::mac::MacAddr;
use ipnet::{Ipv4Net, Ipv6Net};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

/// The backend type weft implements and programs.
pub const BACKEND_VXLAN: &str = "vxlan";

/// A lease record that cannot be used. The store skips it and counts it by [`LeaseError::kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// A store key that is not `a.b.c.d-len` (with host bits clear).
    #[error("{0:?} is not a subnet key (want a.b.c.d-len, optionally &ipv6-len)")]
    BadKey(String),
    /// A value that is not lease JSON.
    #[error("lease is not valid JSON: {0}")]
    InvalidJson(String),
    /// `PublicIP` (or `PublicIPv6`) is missing or not an address.
    #[error("lease has no usable PublicIP: {0}")]
    BadPublicIp(String),
    /// `BackendType` is not vxlan.
    #[error("backend type {0:?} is not vxlan")]
    ForeignBackend(String),
    /// `BackendData` is not `{"VNI":…,"VtepMAC":…}`.
    #[error("vxlan BackendData is unusable: {0}")]
    BadBackendData(String),
    /// The subnet overlaps this node's own subnet (a copy of our lease with
    /// another owner, or a longer prefix inside it): routing it would take
    /// our own pods' traffic away.
    #[error("subnet overlaps this node's own subnet {0}")]
    ClaimsOwnSubnet(ipnet::Ipv4Net),
    /// The lease names this node's own public IP for another subnet: frames
    /// for it would be sent to ourselves.
    #[error("PublicIP {0} is this node's own address")]
    ClaimsOwnPublicIp(std::net::Ipv4Addr),
    /// A record longer than [`MAX_RECORD_BYTES`] (flannel's are ~200 bytes).
    #[error("lease record of {0} bytes is larger than the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge(u64),
    /// The subnet is not inside the cluster's `Network`.
    #[error("subnet is outside the cluster network {0}")]
    OutsideNetwork(ipnet::Ipv4Net),
    /// The IPv6 subnet overlaps this node's own IPv6 subnet (dual stack).
    #[error("IPv6 subnet overlaps this node's own IPv6 subnet {0}")]
    ClaimsOwnIpv6Subnet(ipnet::Ipv6Net),
    /// The lease names this node's own public IPv6 address (dual stack).
    #[error("PublicIPv6 {0} is this node's own address")]
    ClaimsOwnPublicIpv6(std::net::Ipv6Addr),
    /// An IPv6-only lease (`0.0.0.0-0&…`) in a network with IPv4: a node of
    /// an IPv6-only cluster writing to this one's store, or a stale record
    /// from an earlier config.
    #[error(
        "the lease has no IPv4 subnet (an IPv6-only lease) but this network has IPv4; delete it or fix the node's net-conf"
    )]
    NoIpv4Half,
    /// A lease without a complete IPv6 half (IPv6 subnet, `PublicIPv6`) in an
    /// IPv6-only network.
    #[error(
        "the lease has no IPv6 subnet or no PublicIPv6, and this network is IPv6-only; delete it or fix the node's net-conf"
    )]
    NoIpv6Half,
    /// The IPv6 subnet is not inside the cluster's `IPv6Network`.
    #[error("IPv6 subnet is outside the cluster IPv6 network {0}")]
    OutsideIpv6Network(ipnet::Ipv6Net),
}

impl LeaseError {
    /// A stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseError::BadKey(_) => "bad_key",
            LeaseError::InvalidJson(_) => "invalid_json",
            LeaseError::BadPublicIp(_) => "bad_public_ip",
            LeaseError::ForeignBackend(_) => "foreign_backend",
            LeaseError::BadBackendData(_) => "bad_backend_data",
            LeaseError::ClaimsOwnSubnet(_) | LeaseError::ClaimsOwnIpv6Subnet(_) => {
                "claims_own_subnet"
            }
            LeaseError::ClaimsOwnPublicIp(_) | LeaseError::ClaimsOwnPublicIpv6(_) => {
                "claims_own_public_ip"
            }
            LeaseError::OutsideNetwork(_) | LeaseError::OutsideIpv6Network(_) => "outside_network",
            LeaseError::TooLarge(_) => "too_large",
            LeaseError::NoIpv4Half | LeaseError::NoIpv6Half => "wrong_family",
        }
    }
}

/// The largest lease record a store reads: a flannel lease is a few hundred
/// bytes; a larger one is skipped unread (a hostile or corrupt store cannot
/// make the agent parse megabytes per change).
pub const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// The IPv4 subnet of an IPv6-only lease (`EnableIPv4: false`): flannel's
/// zero `IP4Net`, written `0.0.0.0-0` in the key (`0.0.0.0-0&fd00:0:0:3::-64`).
/// Never a route: a lease holding it has no IPv4 half.
pub const NO_IPV4_SUBNET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0);

/// flannel's subnet key: `10.5.34.0-24`, or `10.5.34.0-24&fc00::-64` in dual
/// stack, or `0.0.0.0-0&fc00::-64` when IPv6-only.
pub fn subnet_key(subnet: Ipv4Net, ipv6: Option<Ipv6Net>) -> String {
    let mut key = format!("{}-{}", subnet.addr(), subnet.prefix_len());
    if let Some(v6) = ipv6 {
        key.push_str(&format!("&{}-{}", v6.addr(), v6.prefix_len()));
    }
    key
}

/// Parses a subnet key. Host bits must be zero: such a subnet could not be routed.
pub fn parse_subnet_key(key: &str) -> Result<(Ipv4Net, Option<Ipv6Net>), LeaseError> {
    let bad = || LeaseError::BadKey(key.to_owned());
    let (v4, v6) = match key.split_once('&') {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (key, None),
    };
    let (addr, len) = v4.rsplit_once('-').ok_or_else(bad)?;
    if !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let subnet = Ipv4Net::new(addr, len).map_err(|_| bad())?;
    if subnet.network() != addr {
        return Err(bad());
    }
    let ipv6 = match v6 {
        // `0.0.0.0-0` alone names no subnet at all.
        None if subnet == NO_IPV4_SUBNET => return Err(bad()),
        None => None,
        Some(v6) => {
            let (text, len) = v6.rsplit_once('-').ok_or_else(bad)?;
            // flannel's pattern (`[a-f\d:]+-\d+`), and the canonical form it
            // writes (Go's net.IP.String(), which Rust's Display matches for
            // every address the pattern admits): a key must name its lease
            // exactly as it is written back, renewed and deleted.
            if text.is_empty()
                || !text
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b':'))
                || len.is_empty()
                || !len.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad());
            }
            let addr: Ipv6Addr = text.parse().map_err(|_| bad())?;
            if addr.to_string() != text {
                return Err(bad());
            }
            let len: u8 = len.parse().map_err(|_| bad())?;
            let net = Ipv6Net::new(addr, len).map_err(|_| bad())?;
            if net.network() != addr {
                return Err(bad());
            }
            Some(net)
        }
    };
    Ok((subnet, ipv6))
}

/// A lease's identity in every store: its IPv4 subnet and, in dual stack,
/// its IPv6 subnet; IPv6-only, [`NO_IPV4_SUBNET`] and its IPv6 subnet.
/// Displays as flannel's key (`10.244.3.0-24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    /// The IPv4 subnet.
    pub subnet: Ipv4Net,
    /// The IPv6 subnet of a dual-stack lease.
    pub ipv6_subnet: Option<Ipv6Net>,
}

impl SubnetKey {
    /// The key of an IPv4-only lease.
    pub const fn v4(subnet: Ipv4Net) -> SubnetKey {
        SubnetKey {
            subnet,
            ipv6_subnet: None,
        }
    }

    /// The key of an IPv6-only lease.
    pub const fn v6_only(ipv6_subnet: Ipv6Net) -> SubnetKey {
        SubnetKey {
            subnet: NO_IPV4_SUBNET,
            ipv6_subnet: Some(ipv6_subnet),
        }
    }

    /// Whether the lease has an IPv4 half (every lease but an IPv6-only one).
    pub fn has_ipv4(&self) -> bool {
        self.subnet != NO_IPV4_SUBNET
    }

    /// What tells leases apart in one cluster: the IPv4 subnet, or the IPv6
    /// subnet of an IPv6-only lease (flannel's `sameSubnet`). Two leases of a
    /// dual-stack cluster with one IPv4 subnet are one node's lease, renamed.
    pub fn id(&self) -> LeaseId {
        match self.ipv6_subnet {
            Some(v6) if !self.has_ipv4() => LeaseId::V6(v6),
            _ => LeaseId::V4(self.subnet),
        }
    }

    /// Parses flannel's key (see [`parse_subnet_key`]).
    pub fn parse(key: &str) -> Result<SubnetKey, LeaseError> {
        let (subnet, ipv6_subnet) = parse_subnet_key(key)?;
        Ok(SubnetKey {
            subnet,
            ipv6_subnet,
        })
    }
}

/// See [`SubnetKey::id`]: how the watcher and the set of peers key leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeaseId {
    /// A lease with an IPv4 half, by its IPv4 subnet.
    V4(Ipv4Net),
    /// An IPv6-only lease, by its IPv6 subnet.
    V6(Ipv6Net),
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseId::V4(s) => s.fmt(f),
            LeaseId::V6(s) => s.fmt(f),
        }
    }
}

impl From<Ipv4Net> for SubnetKey {
    fn from(subnet: Ipv4Net) -> SubnetKey {
        SubnetKey::v4(subnet)
    }
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&subnet_key(self.subnet, self.ipv6_subnet))
    }
}

/// flannel's `LeaseAttrs`. Backend data is kept as the raw JSON text it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseAttrs {
    /// `PublicIP`: where the node's VTEP is reached.
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6` (null when absent).
    pub public_ipv6: Option<Ipv6Addr>,
    /// `BackendType` (`vxlan` for weft).
    pub backend_type: String,
    /// `BackendData`, as the raw JSON given.
    pub backend_data: Option<String>,
    /// `BackendV6Data`, as the raw JSON given.
    pub backend_v6_data: Option<String>,
}

impl LeaseAttrs {
    /// The attributes weft publishes for its own VTEP.
    pub fn vxlan(public_ip: Ipv4Addr, data: &VxlanBackendData) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: BACKEND_VXLAN.to_owned(),
            backend_data: Some(data.to_json()),
            backend_v6_data: None,
        }
    }

    /// flannel's exact serialisation: field order `PublicIP`, `PublicIPv6` (null when
    /// absent), `BackendType`, `BackendData`, `BackendV6Data` (the last three omitted when empty).
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(160);
        out.push_str("{\"PublicIP\":\"");
        out.push_str(&self.public_ip.to_string());
        out.push_str("\",\"PublicIPv6\":");
        match self.public_ipv6 {
            Some(ip) => {
                out.push('"');
                out.push_str(&ip.to_string());
                out.push('"');
            }
            None => out.push_str("null"),
        }
        if !self.backend_type.is_empty() {
            out.push_str(",\"BackendType\":");
            out.push_str(&json_string(&self.backend_type));
        }
        if let Some(data) = &self.backend_data {
            out.push_str(",\"BackendData\":");
            out.push_str(data);
        }
        if let Some(data) = &self.backend_v6_data {
            out.push_str(",\"BackendV6Data\":");
            out.push_str(data);
        }
        out.push('}');
        out
    }

    /// Reads flannel's lease JSON (keys in any case, unknown keys ignored).
    pub fn from_json(text: &str) -> Result<LeaseAttrs, LeaseError> {
        let fields = Fields::parse(text).map_err(|e| LeaseError::InvalidJson(e.to_string()))?;
        let invalid = |e: super::json::FieldError| LeaseError::InvalidJson(e.to_string());
        let public_ip: String = fields
            .get("PublicIP")
            .map_err(invalid)?
            .ok_or_else(|| LeaseError::BadPublicIp("PublicIP is missing".into()))?;
        let public_ip = public_ip.parse().map_err(|_| {
            LeaseError::BadPublicIp(format!("{public_ip:?} is not an IPv4 address"))
        })?;
        let public_ipv6 = match fields.get::<String>("PublicIPv6").map_err(invalid)? {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s.parse().map_err(|_| {
                LeaseError::BadPublicIp(format!("PublicIPv6 {s:?} is not an IPv6 address"))
            })?),
        };
        let backend_type = fields
            .get::<String>("BackendType")
            .map_err(invalid)?
            .unwrap_or_default();
        let raw = |key: &str| {
            fields
                .raw(key)
                .filter(|r| r.get() != "null")
                .map(|r| super::json::compact(r.get()))
        };
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type,
            backend_data: raw("BackendData"),
            backend_v6_data: raw("BackendV6Data"),
        })
    }

    /// The VXLAN data of this lease; an error for other backends or unusable data.
    pub fn vxlan_data(&self) -> Result<VxlanBackendData, LeaseError> {
        if !self.backend_type.eq_ignore_ascii_case(BACKEND_VXLAN) {
            return Err(LeaseError::ForeignBackend(self.backend_type.clone()));
        }
        let data = self
            .backend_data
            .as_deref()
            .ok_or_else(|| LeaseError::BadBackendData("BackendData is missing".into()))?;
        VxlanBackendData::from_json(data)
    }

    /// The VXLAN data of this lease's IPv6 VTEP (`BackendV6Data`, dual
    /// stack); an error for other backends, or when it is missing or unusable.
    pub fn vxlan_v6_data(&self) -> Result<VxlanBackendData, LeaseError> {
        if !self.backend_type.eq_ignore_ascii_case(BACKEND_VXLAN) {
            return Err(LeaseError::ForeignBackend(self.backend_type.clone()));
        }
        let data = self
            .backend_v6_data
            .as_deref()
            .ok_or_else(|| LeaseError::BadBackendData("BackendV6Data is missing".into()))?;
        VxlanBackendData::from_json(data)
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The vxlan backend's lease data: `{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanBackendData {
    /// `VNI`.
    pub vni: u32,
    /// `VtepMAC`: the MAC of the node's VTEP.
    pub vtep_mac: MacAddr,
}

impl VxlanBackendData {
    /// flannel's exact JSON.
    pub fn to_json(&self) -> String {
        format!("{{\"VNI\":{},\"VtepMAC\":\"{}\"}}", self.vni, self.vtep_mac)
    }

    /// Reads the backend data (keys in any case).
    pub fn from_json(text: &str) -> Result<VxlanBackendData, LeaseError> {
        let bad = |e: String| LeaseError::BadBackendData(e);
        let fields = Fields::parse(text).map_err(|e| bad(e.to_string()))?;
        let vni = fields
            .get::<u32>("VNI")
            .map_err(|e| bad(e.to_string()))?
            .unwrap_or(0);
        let vtep_mac = fields
            .get::<MacAddr>("VtepMAC")
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("VtepMAC is missing".into()))?;
        Ok(VxlanBackendData { vni, vtep_mac })
    }
}

/// One node's claim on a subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The node's IPv4 subnet.
    pub subnet: Ipv4Net,
    /// Its IPv6 subnet, in dual stack.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// The node's public IP and VTEP.
    pub attrs: LeaseAttrs,
    /// When the store will forget the lease unless it is renewed; `None` for reservations.
    pub expiration: Option<SystemTime>,
}

impl Lease {
    /// The store key, as flannel names it.
    pub fn key(&self) -> String {
        subnet_key(self.subnet, self.ipv6_subnet)
    }

    /// Whether the lease has an IPv4 half (every lease but an IPv6-only one).
    pub fn has_ipv4(&self) -> bool {
        self.subnet != NO_IPV4_SUBNET
    }

    /// See [`SubnetKey::id`].
    pub fn id(&self) -> LeaseId {
        self.subnet_key().id()
    }

    /// The subnets that identify the lease.
    pub fn subnet_key(&self) -> SubnetKey {
        SubnetKey {
            subnet: self.subnet,
            ipv6_subnet: self.ipv6_subnet,
        }
    }

    /// Builds a lease from a store key and its JSON value.
    pub fn from_record(
        key: &str,
        value: &str,
        expiration: Option<SystemTime>,
    ) -> Result<Lease, LeaseError> {
        let (subnet, ipv6_subnet) = parse_subnet_key(key)?;
        if value.len() as u64 > MAX_RECORD_BYTES {
            return Err(LeaseError::TooLarge(value.len() as u64));
        }
        let attrs = LeaseAttrs::from_json(value)?;
        Ok(Lease {
            subnet,
            ipv6_subnet,
            attrs,
            expiration,
        })
    }
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.has_ipv4() {
            write!(f, "{} (public IP {})", self.subnet, self.attrs.public_ip)?;
        }
        if let Some(v6) = self.ipv6_subnet {
            if self.has_ipv4() {
                f.write_str(", ")?;
            }
            write!(f, "{v6}")?;
            if let Some(ip) = self.attrs.public_ipv6 {
                write!(f, " (public IPv6 {ip})")?;
            }
        }
        Ok(())
    }
}

/// What changed in the set of leases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A lease appeared or its attributes changed.
    Added(Lease),
    /// The lease of this key is gone (a store reports a delete by its key).
    Removed(SubnetKey),
}

impl LeaseEvent {
    /// The lease the event is about (see [`SubnetKey::id`]).
    pub fn id(&self) -> LeaseId {
        match self {
            LeaseEvent::Added(l) => l.id(),
            LeaseEvent::Removed(k) => k.id(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNEL_DOC: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    #[test]
    fn reads_and_writes_flannels_documented_lease_byte_for_byte() {
        let attrs = LeaseAttrs::from_json(FLANNEL_DOC).unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(192, 168, 64, 3));
        let data = attrs.vxlan_data().unwrap();
        assert_eq!(data.vni, 1);
        assert_eq!(data.vtep_mac.to_string(), "c6:d2:32:6f:8f:44");
        assert_eq!(attrs.to_json(), FLANNEL_DOC);
        assert_eq!(
            LeaseAttrs::vxlan(attrs.public_ip, &data).to_json(),
            FLANNEL_DOC
        );
    }

    #[test]
    fn ipv6_only_keys_are_flannels_zero_ipv4_net_and_the_ipv6_subnet() {
        let v6: Ipv6Net = "fd00:0:0:3::/64".parse().unwrap();
        let key = SubnetKey::v6_only(v6);
        assert_eq!(key.to_string(), "0.0.0.0-0&fd00:0:0:3::-64");
        assert_eq!(SubnetKey::parse(&key.to_string()), Ok(key));
        assert!(!key.has_ipv4());
        assert_eq!(key.id(), LeaseId::V6(v6));
        let dual = SubnetKey::parse("10.244.3.0-24&fd00:0:0:3::-64").unwrap();
        assert!(dual.has_ipv4());
        assert_eq!(dual.id(), LeaseId::V4("10.244.3.0/24".parse().unwrap()));
        // The zero net alone names nothing.
        assert!(SubnetKey::parse("0.0.0.0-0").is_err());
        let lease = Lease::from_record(
            "0.0.0.0-0&fd00:0:0:3::-64",
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:99::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:00:06"}}"#,
            None,
        )
        .unwrap();
        assert!(!lease.has_ipv4());
        assert_eq!(
            lease.to_string(),
            "fd00:0:0:3::/64 (public IPv6 fd00:99::1)"
        );
    }

    #[test]
    fn a_record_over_the_limit_is_refused_unparsed() {
        let pad = " ".repeat(MAX_RECORD_BYTES as usize);
        let big = format!("{}{pad}}}", &FLANNEL_DOC[..FLANNEL_DOC.len() - 1]);
        let err = Lease::from_record("10.5.34.0-24", &big, None).unwrap_err();
        assert_eq!(err.kind(), "too_large");
        assert!(Lease::from_record("10.5.34.0-24", FLANNEL_DOC, None).is_ok());
    }

    #[test]
    fn accepts_keys_in_any_case_and_spaced_backend_data() {
        let doc = r#"{"publicip":"10.0.0.1","BACKENDTYPE":"vxlan","backenddata":{ "vni": 7, "vtepmac": "0e:00:00:00:00:01" },"Extra":1}"#;
        let attrs = LeaseAttrs::from_json(doc).unwrap();
        assert_eq!(
            attrs.backend_data.as_deref(),
            Some(r#"{"vni":7,"vtepmac":"0e:00:00:00:00:01"}"#)
        );
        assert_eq!(attrs.vxlan_data().unwrap().vni, 7);
    }

    #[test]
    fn backend_data_is_kept_as_written_so_rendering_is_stable() {
        // Found by the lease fuzz target: BackendData went through a
        // serde_json::Value, whose float parsing is not exact, so each
        // re-rendering changed the number (…743e+31 → …745e+31) and keys
        // were re-sorted; flannel keeps a RawMessage as written.
        let doc = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BaCkendData":{"VNI":11111111000012743110316963455886,"VtepOAC":"44"}}"#;
        let attrs = LeaseAttrs::from_json(doc).unwrap();
        assert_eq!(
            attrs.backend_data.as_deref(),
            Some(r#"{"VNI":11111111000012743110316963455886,"VtepOAC":"44"}"#)
        );
        let again = LeaseAttrs::from_json(&attrs.to_json()).unwrap();
        assert_eq!(again, attrs);
        let doc = r#"{"PublicIP":"10.0.0.1","BackendData":{ "VtepMAC": "0e:00:00:00:00:01", "VNI": 1.1111111000012743e+31 }}"#;
        let attrs = LeaseAttrs::from_json(doc).unwrap();
        assert_eq!(
            attrs.backend_data.as_deref(),
            Some(r#"{"VtepMAC":"0e:00:00:00:00:01","VNI":1.1111111000012743e+31}"#)
        );
        assert_eq!(LeaseAttrs::from_json(&attrs.to_json()).unwrap(), attrs);
    }

    #[test]
    fn bad_records_are_classified() {
        let kind = |doc: &str| {
            LeaseAttrs::from_json(doc)
                .and_then(|a| a.vxlan_data())
                .unwrap_err()
                .kind()
        };
        assert_eq!(kind("{not json"), "invalid_json");
        assert_eq!(
            kind(r#"{"PublicIP":"300.1.1.1","BackendType":"vxlan"}"#),
            "bad_public_ip"
        );
        assert_eq!(kind(r#"{"BackendType":"vxlan"}"#), "bad_public_ip");
        assert_eq!(
            kind(r#"{"PublicIP":"10.0.0.1","BackendType":"host-gw"}"#),
            "foreign_backend"
        );
        assert_eq!(
            kind(r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan"}"#),
            "bad_backend_data"
        );
        assert_eq!(
            kind(
                r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"zz"}}"#
            ),
            "bad_backend_data"
        );
    }

    #[test]
    fn subnet_keys_round_trip() {
        let (v4, v6) = parse_subnet_key("10.5.34.0-24").unwrap();
        assert_eq!(v4, "10.5.34.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(v6, None);
        assert_eq!(subnet_key(v4, None), "10.5.34.0-24");
        let (v4, v6) = parse_subnet_key("10.5.34.0-24&fc00::-64").unwrap();
        assert_eq!(subnet_key(v4, v6), "10.5.34.0-24&fc00::-64");
    }

    const DUAL: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}"#;

    #[test]
    fn a_dual_stack_lease_is_read_and_written_byte_for_byte() {
        let lease = Lease::from_record("10.5.34.0-24&fc00:0:0:22::-64", DUAL, None).unwrap();
        assert_eq!(lease.key(), "10.5.34.0-24&fc00:0:0:22::-64");
        assert_eq!(
            lease.ipv6_subnet,
            Some("fc00:0:0:22::/64".parse::<Ipv6Net>().unwrap())
        );
        assert_eq!(
            lease.attrs.public_ipv6,
            Some("fd00::3".parse::<Ipv6Addr>().unwrap())
        );
        assert_eq!(
            lease.attrs.vxlan_data().unwrap().vtep_mac.to_string(),
            "c6:d2:32:6f:8f:44"
        );
        assert_eq!(
            lease.attrs.vxlan_v6_data().unwrap().vtep_mac.to_string(),
            "c6:d2:32:6f:8f:45"
        );
        assert_eq!(lease.attrs.to_json(), DUAL);
        // Built from parts, as the agent builds its own.
        let v4 = VxlanBackendData {
            vni: 1,
            vtep_mac: "c6:d2:32:6f:8f:44".parse().unwrap(),
        };
        let v6 = VxlanBackendData {
            vni: 1,
            vtep_mac: "c6:d2:32:6f:8f:45".parse().unwrap(),
        };
        let mut attrs = LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 64, 3), &v4);
        attrs.public_ipv6 = Some("fd00::3".parse().unwrap());
        attrs.backend_v6_data = Some(v6.to_json());
        assert_eq!(attrs.to_json(), DUAL);
        assert_eq!(LeaseAttrs::from_json(&attrs.to_json()).unwrap(), attrs);
        // BackendV6Data absent: omitted, and the v6 accessor says so.
        let v4_only = LeaseAttrs::from_json(FLANNEL_DOC).unwrap();
        assert_eq!(
            v4_only.vxlan_v6_data().unwrap_err().to_string(),
            "vxlan BackendData is unusable: BackendV6Data is missing"
        );
        // A public IPv6 without v6 data: PublicIPv6 set, nothing else added.
        let mut half = v4_only.clone();
        half.public_ipv6 = Some("2001:db8::1".parse().unwrap());
        assert_eq!(
            half.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":"2001:db8::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        assert_eq!(
            LeaseAttrs::from_json(r#"{"PublicIP":"10.0.0.1","PublicIPv6":"10.0.0.2"}"#)
                .unwrap_err()
                .kind(),
            "bad_public_ip"
        );
    }

    #[test]
    fn dual_stack_keys_round_trip_in_flannels_form() {
        for key in [
            "10.5.34.0-24&fc00::-64",
            "10.244.1.0-24&2001:db8:1:2::-64",
            "10.244.1.0-24&fd00:0:0:1:2::-80",
            "10.244.1.0-24&fc00::1:0:0:0-112",
        ] {
            let parsed = SubnetKey::parse(key).unwrap();
            assert_eq!(parsed.to_string(), key);
            assert!(parsed.ipv6_subnet.is_some(), "{key}");
        }
        let key = SubnetKey {
            subnet: "10.5.34.0/24".parse().unwrap(),
            ipv6_subnet: Some("fc00:0:0:0::/64".parse().unwrap()),
        };
        assert_eq!(key.to_string(), "10.5.34.0-24&fc00::-64");
        assert_eq!(SubnetKey::from(key.subnet), SubnetKey::v4(key.subnet));
    }

    #[test]
    fn bad_subnet_keys_are_refused() {
        for key in [
            "config",
            "10.5.34.0",
            "10.5.34.0-33",
            "10.5.34.1-24",
            "10.5.34.0-+4",
            "x10.5.34.0-24",
            "10.5.34.0-24&zz-64",
            // Not flannel's pattern, or not the canonical form written back.
            "10.5.34.0-24&FC00::-64",
            "10.5.34.0-24&fc00:0::-64",
            "10.5.34.0-24&fc00::-+64",
            "10.5.34.0-24&fc00::-",
            "10.5.34.0-24&fc00::-129",
            "10.5.34.0-24&fc00::1-64",
            "10.5.34.0-24&::ffff:10.0.0.0-120",
            "10.5.34.0-24&-64",
            "",
        ] {
            assert_eq!(
                parse_subnet_key(key).unwrap_err().kind(),
                "bad_key",
                "{key}"
            );
        }
    }
}
