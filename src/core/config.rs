//! flannel's network configuration (`net-conf.json`, or `<prefix>/config` in
//! etcd): parsing with Go's case-insensitive keys, flannel's defaults and
//! validation messages (`CheckNetworkConfig`), and the vxlan backend section.
//! The one deliberate difference: the default VXLAN port is 4789, not 8472.

use super::json::Fields;
use super::wire::vxlan::Vni;
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::value::RawValue;
use std::net::{Ipv4Addr, Ipv6Addr};

/// weft's default VXLAN UDP port (IANA's). flannel leaves the kernel's 8472.
pub const DEFAULT_PORT: u16 = 4789;
/// Bytes VXLAN adds in front of an inner frame over IPv4: 14 + 8 + 8 + 20.
pub const ENCAP_OVERHEAD: u32 = 50;

/// Why a network configuration is refused. Messages are flannel's where flannel has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The JSON is not a net-conf document.
    #[error("error parsing subnet config: {0}")]
    Parse(String),
    /// `Network` is missing or not an IPv4 network.
    #[error("please define a correct Network parameter in the flannel config")]
    MissingNetwork,
    /// `EnableIPv6` without a usable `IPv6Network`.
    #[error("please define a correct IPv6Network parameter in the flannel config")]
    MissingIpv6Network,
    /// `EnableIPv4: false` without `EnableIPv6: true`: no network at all.
    #[error(
        "the config enables neither IPv4 nor IPv6 (EnableIPv4 is false and EnableIPv6 is not true): for an IPv6-only network set \"EnableIPv6\": true and \"IPv6Network\", else remove \"EnableIPv4\": false and set \"Network\""
    )]
    NoAddressFamily,
    /// `SubnetLen` leaves no room for hosts.
    #[error("SubnetLen must be less than /31")]
    SubnetLenTooLong,
    /// `IPv6SubnetLen` leaves no room for hosts.
    #[error("SubnetLen must be less than /127")]
    Ipv6SubnetLenTooLong,
    /// `Network` holds fewer than four subnets of `SubnetLen`.
    #[error("network must be able to accommodate at least four subnets")]
    TooFewSubnets,
    /// `Network` is smaller than a /28.
    #[error("network is too small. Minimum useful network prefix is /28")]
    NetworkTooSmall,
    /// `IPv6Network` is smaller than a /124.
    #[error("IPv6Network is too small. Minimum useful network prefix is /124")]
    Ipv6NetworkTooSmall,
    /// `SubnetMin` lies outside `Network`.
    #[error("SubnetMin is not in the range of the Network")]
    SubnetMinOutside,
    /// `SubnetMax` lies outside `Network`.
    #[error("SubnetMax is not in the range of the Network")]
    SubnetMaxOutside,
    /// `SubnetMin` is not the start of a subnet.
    #[error("SubnetMin is not on a SubnetLen boundary: {0}")]
    SubnetMinUnaligned(Ipv4Addr),
    /// `SubnetMax` is not the start of a subnet.
    #[error("SubnetMax is not on a SubnetLen boundary: {0}")]
    SubnetMaxUnaligned(Ipv4Addr),
    /// `IPv6SubnetMin` lies outside `IPv6Network`.
    #[error("IPv6SubnetMin is not in the range of the IPv6Network")]
    Ipv6SubnetMinOutside,
    /// `IPv6SubnetMax` lies outside `IPv6Network`.
    #[error("IPv6SubnetMax is not in the range of the IPv6Network")]
    Ipv6SubnetMaxOutside,
    /// `IPv6SubnetMin` is not the start of a subnet.
    #[error("IPv6SubnetMin is not on a SubnetLen boundary: {0}")]
    Ipv6SubnetMinUnaligned(Ipv6Addr),
    /// `IPv6SubnetMax` is not the start of a subnet.
    #[error("IPv6SubnetMax is not on a SubnetLen boundary: {0}")]
    Ipv6SubnetMaxUnaligned(Ipv6Addr),
    /// `Backend.Type` is not vxlan (flannel defaults to udp).
    #[error(
        "weft implements only the vxlan backend, but the config selects {0:?}{hint}; set \"Backend\": {{\"Type\": \"vxlan\"}}",
        hint = if .0 == "udp" { " (flannel's default when Backend is absent)" } else { "" }
    )]
    UnsupportedBackend(String),
    /// The vxlan `Backend` section has a value of the wrong type or range.
    #[error("error decoding VXLAN backend config: {0}")]
    BadVxlanConfig(String),
}

/// The vxlan backend section (`Backend` with `Type: vxlan`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanConfig {
    /// `VNI`, default 1.
    pub vni: Vni,
    /// `Port`, the VXLAN UDP port, default 4789.
    pub port: u16,
    /// Underlay MTU to derive the overlay MTU from; `None`: the interface's.
    pub mtu: Option<u32>,
    /// `GBP`; `true` is refused when the backend section is read (a TAP cannot carry `skb->mark`).
    pub gbp: bool,
    /// `Learning` (accepted, not acted on: weft never learns from traffic).
    pub learning: bool,
    /// `DirectRouting`: a peer on a directly connected underlay subnet gets a
    /// plain route via its public IP instead of the overlay route.
    pub direct_routing: bool,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig {
            vni: Vni::new(1).expect("1 fits in 24 bits"),
            port: DEFAULT_PORT,
            mtu: None,
            gbp: false,
            learning: false,
            direct_routing: false,
        }
    }
}

/// A checked network configuration with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// `EnableIPv4`, default true; false with `EnableIPv6` is an IPv6-only
    /// network (leases on [`NO_IPV4_SUBNET`](super::lease::NO_IPV4_SUBNET)).
    pub enable_ipv4: bool,
    /// `EnableIPv6`: dual stack, or IPv6-only with `EnableIPv4` false.
    pub enable_ipv6: bool,
    /// `EnableNFTables`: masquerade with nftables instead of iptables.
    pub enable_nftables: bool,
    /// `Network`, the cluster's pod network.
    pub network: Option<Ipv4Net>,
    /// `SubnetLen`, each node's subnet size (default /24, or 4 bits longer than a small network).
    pub subnet_len: u8,
    /// `SubnetMin`, the first subnet handed out.
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax`, the last subnet handed out.
    pub subnet_max: Ipv4Addr,
    /// `IPv6Network`.
    pub ipv6_network: Option<Ipv6Net>,
    /// `IPv6SubnetLen`.
    pub ipv6_subnet_len: u8,
    /// `IPv6SubnetMin`.
    pub ipv6_subnet_min: Ipv6Addr,
    /// `IPv6SubnetMax`.
    pub ipv6_subnet_max: Ipv6Addr,
    /// `Backend.Type`.
    pub backend_type: String,
    /// The vxlan backend section.
    pub vxlan: VxlanConfig,
    /// Settings accepted but not acted on, for the agent to log.
    pub warnings: Vec<String>,
}

impl NetConfig {
    /// flannel's `ParseConfig` followed by `CheckNetworkConfig` (used by the
    /// etcd and the embedded store; the Kubernetes manager skips the check).
    pub fn parse_and_check(text: &str) -> Result<NetConfig, ConfigError> {
        let mut config = NetConfig::parse(text)?;
        config.check()?;
        Ok(config)
    }

    /// flannel's `ParseConfig`: keys in any case, unknown keys ignored,
    /// `EnableIPv4` true unless set, backend type `udp` when `Backend` is absent.
    pub fn parse(text: &str) -> Result<NetConfig, ConfigError> {
        let parse_err = |e: super::json::FieldError| ConfigError::Parse(e.to_string());
        let fields = Fields::parse(text).map_err(parse_err)?;
        let network = match fields.get::<String>("Network").map_err(parse_err)? {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(parse_v4_cidr(&s)?),
        };
        let ipv6_network = match fields.get::<String>("IPv6Network").map_err(parse_err)? {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(
                s.parse::<Ipv6Net>()
                    .map(|n| n.trunc())
                    .map_err(|_| ConfigError::Parse(format!("invalid IPv6 CIDR format {s:?}")))?,
            ),
        };
        let subnet_len = fields
            .get::<u8>("SubnetLen")
            .map_err(parse_err)?
            .unwrap_or(0);
        let ipv6_subnet_len = fields
            .get::<u8>("IPv6SubnetLen")
            .map_err(parse_err)?
            .unwrap_or(0);
        let v4_addr = |key: &str| -> Result<Ipv4Addr, ConfigError> {
            match fields.get::<String>(key).map_err(parse_err)? {
                None => Ok(Ipv4Addr::UNSPECIFIED),
                Some(s) => s.parse().map_err(|_| {
                    ConfigError::Parse(format!("{key}: {s:?} is not an IPv4 address"))
                }),
            }
        };
        let v6_addr = |key: &str| -> Result<Ipv6Addr, ConfigError> {
            match fields.get::<String>(key).map_err(parse_err)? {
                None => Ok(Ipv6Addr::UNSPECIFIED),
                Some(s) => s.parse().map_err(|_| {
                    ConfigError::Parse(format!("{key}: {s:?} is not an IPv6 address"))
                }),
            }
        };
        let backend = fields.raw("Backend").filter(|b| b.get() != "null");
        let backend_type = match backend {
            None => "udp".to_owned(),
            Some(raw) => {
                let section = Fields::from_raw(raw).map_err(|e| {
                    ConfigError::Parse(format!("error decoding Backend property of config: {e}"))
                })?;
                section
                    .get::<String>("Type")
                    .map_err(|e| {
                        ConfigError::Parse(format!(
                            "error decoding Backend property of config: {e}"
                        ))
                    })?
                    .unwrap_or_default()
                    .to_ascii_lowercase()
            }
        };
        let mut warnings = Vec::new();
        let vxlan = match (backend_type.as_str(), backend) {
            ("vxlan", Some(raw)) => parse_vxlan(raw, &mut warnings)?,
            _ => VxlanConfig::default(),
        };
        Ok(NetConfig {
            enable_ipv4: fields
                .get::<bool>("EnableIPv4")
                .map_err(parse_err)?
                .unwrap_or(true),
            enable_ipv6: fields
                .get::<bool>("EnableIPv6")
                .map_err(parse_err)?
                .unwrap_or(false),
            enable_nftables: fields
                .get::<bool>("EnableNFTables")
                .map_err(parse_err)?
                .unwrap_or(false),
            network,
            subnet_len,
            subnet_min: v4_addr("SubnetMin")?,
            subnet_max: v4_addr("SubnetMax")?,
            ipv6_network,
            ipv6_subnet_len,
            ipv6_subnet_min: v6_addr("IPv6SubnetMin")?,
            ipv6_subnet_max: v6_addr("IPv6SubnetMax")?,
            backend_type,
            vxlan,
            warnings,
        })
    }

    /// flannel's `CheckNetworkConfig`: fills SubnetLen/Min/Max defaults and
    /// validates. One check flannel lacks: at least one family is enabled
    /// (IPv6-only needs `EnableIPv6` and `IPv6Network`).
    pub fn check(&mut self) -> Result<(), ConfigError> {
        self.require_address_family()?;
        if self.enable_ipv4 {
            let network = self.network.ok_or(ConfigError::MissingNetwork)?;
            let prefix = network.prefix_len();
            if self.subnet_len > 0 {
                if self.subnet_len > 30 {
                    return Err(ConfigError::SubnetLenTooLong);
                }
                if self.subnet_len < prefix + 2 {
                    return Err(ConfigError::TooFewSubnets);
                }
            } else if prefix > 28 {
                return Err(ConfigError::NetworkTooSmall);
            } else if prefix <= 22 {
                self.subnet_len = 24;
            } else {
                self.subnet_len = prefix + 2;
            }
            let size = 1u32 << (32 - self.subnet_len);
            let base = u32::from(network.network());
            if self.subnet_min.is_unspecified() {
                self.subnet_min = Ipv4Addr::from(base + size);
            } else if !network.contains(&self.subnet_min) {
                return Err(ConfigError::SubnetMinOutside);
            }
            if self.subnet_max.is_unspecified() {
                self.subnet_max = Ipv4Addr::from(u32::from(network.broadcast()) - size + 1);
            } else if !network.contains(&self.subnet_max) {
                return Err(ConfigError::SubnetMaxOutside);
            }
            if u32::from(self.subnet_min) % size != 0 {
                return Err(ConfigError::SubnetMinUnaligned(self.subnet_min));
            }
            if u32::from(self.subnet_max) % size != 0 {
                return Err(ConfigError::SubnetMaxUnaligned(self.subnet_max));
            }
        }
        if self.enable_ipv6 {
            let network = self.ipv6_network.ok_or(ConfigError::MissingIpv6Network)?;
            let prefix = network.prefix_len();
            if self.ipv6_subnet_len > 0 {
                if self.ipv6_subnet_len > 126 {
                    return Err(ConfigError::Ipv6SubnetLenTooLong);
                }
                if self.ipv6_subnet_len < prefix + 2 {
                    return Err(ConfigError::TooFewSubnets);
                }
            } else if prefix > 124 {
                return Err(ConfigError::Ipv6NetworkTooSmall);
            } else if prefix <= 62 {
                self.ipv6_subnet_len = 64;
            } else {
                self.ipv6_subnet_len = prefix + 2;
            }
            let size = 1u128 << (128 - self.ipv6_subnet_len);
            let base = u128::from(network.network());
            if self.ipv6_subnet_min.is_unspecified() {
                self.ipv6_subnet_min = Ipv6Addr::from(base + size);
            } else if !network.contains(&self.ipv6_subnet_min) {
                return Err(ConfigError::Ipv6SubnetMinOutside);
            }
            if self.ipv6_subnet_max.is_unspecified() {
                self.ipv6_subnet_max = Ipv6Addr::from(u128::from(network.broadcast()) - size + 1);
            } else if !network.contains(&self.ipv6_subnet_max) {
                return Err(ConfigError::Ipv6SubnetMaxOutside);
            }
            if u128::from(self.ipv6_subnet_min) % size != 0 {
                return Err(ConfigError::Ipv6SubnetMinUnaligned(self.ipv6_subnet_min));
            }
            if u128::from(self.ipv6_subnet_max) % size != 0 {
                return Err(ConfigError::Ipv6SubnetMaxUnaligned(self.ipv6_subnet_max));
            }
        }
        Ok(())
    }

    /// Refuses a config that enables neither IPv4 nor IPv6 (the Kubernetes
    /// store, which skips [`NetConfig::check`], asks this alone).
    pub fn require_address_family(&self) -> Result<(), ConfigError> {
        if !self.enable_ipv4 && !self.enable_ipv6 {
            return Err(ConfigError::NoAddressFamily);
        }
        Ok(())
    }

    /// Whether this is an IPv6-only network (`EnableIPv4: false`, `EnableIPv6: true`).
    pub fn ipv6_only(&self) -> bool {
        !self.enable_ipv4 && self.enable_ipv6
    }

    /// Refuses configurations weft cannot run: other backends.
    pub fn require_vxlan(&self) -> Result<(), ConfigError> {
        if self.backend_type != "vxlan" {
            return Err(ConfigError::UnsupportedBackend(self.backend_type.clone()));
        }
        Ok(())
    }

    /// Every IPv4 subnet from SubnetMin to SubnetMax, in order (none in an
    /// IPv6-only network, or before [`NetConfig::check`] filled them in).
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let len = self.subnet_len;
        let size = 1u64 << (32 - u32::from(len.min(32)));
        let min = u64::from(u32::from(self.subnet_min));
        let max = u64::from(u32::from(self.subnet_max));
        let walk = self.enable_ipv4 && self.network.is_some() && len > 0;
        (0..)
            .map(move |i: u64| min + i * size)
            .take_while(move |start| walk && *start <= max)
            .filter_map(move |start| Ipv4Net::new(Ipv4Addr::from(start as u32), len).ok())
    }

    /// Whether `subnet` is one this configuration could hand out (flannel's
    /// test for reusing an existing lease).
    pub fn fits(&self, subnet: Ipv4Net) -> bool {
        self.network.is_some_and(|n| n.contains(&subnet))
            && subnet.prefix_len() == self.subnet_len
            && subnet.network() >= self.subnet_min
            && subnet.network() <= self.subnet_max
    }

    /// The overlay MTU for an underlay interface MTU: (Backend.MTU or it) − 50.
    pub fn overlay_mtu(&self, interface_mtu: u32) -> u32 {
        self.vxlan
            .mtu
            .unwrap_or(interface_mtu)
            .saturating_sub(ENCAP_OVERHEAD)
    }
}

fn parse_v4_cidr(s: &str) -> Result<Ipv4Net, ConfigError> {
    s.parse::<Ipv4Net>()
        .map(|n| n.trunc())
        .map_err(|_| ConfigError::Parse(format!("invalid IPv4 CIDR format {s:?}")))
}

fn parse_vxlan(raw: &RawValue, warnings: &mut Vec<String>) -> Result<VxlanConfig, ConfigError> {
    let bad = |e: String| ConfigError::BadVxlanConfig(e);
    let fields = Fields::from_raw(raw).map_err(|e| bad(e.to_string()))?;
    let int = |key: &str| fields.get::<i64>(key).map_err(|e| bad(e.to_string()));
    let flag = |key: &str| fields.get::<bool>(key).map_err(|e| bad(e.to_string()));
    let mut config = VxlanConfig::default();
    if let Some(vni) = int("VNI")? {
        config.vni = u32::try_from(vni)
            .ok()
            .and_then(Vni::new)
            .ok_or_else(|| bad(format!("VNI {vni} does not fit in 24 bits (0..16777215)")))?;
    }
    match int("Port")? {
        None | Some(0) => {}
        Some(port) => {
            config.port = u16::try_from(port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(format!("Port {port} is not a UDP port (1..65535)")))?;
        }
    }
    match int("MTU")? {
        None | Some(0) => {}
        Some(mtu) => {
            let min = 68 + i64::from(ENCAP_OVERHEAD);
            if !(min..=65535).contains(&mtu) {
                return Err(bad(format!("MTU {mtu} is out of range ({min}..65535)")));
            }
            config.mtu = Some(mtu as u32);
        }
    }
    config.gbp = flag("GBP")?.unwrap_or(false);
    if config.gbp {
        return Err(bad(
            "GBP (VXLAN Group Based Policy) is not supported by weft: the policy ID is the packet mark (skb->mark), which a TAP device neither hands to nor takes from userspace; remove \"GBP\" from the Backend section, or keep this cluster on flannel's kernel vxlan backend".into(),
        ));
    }
    config.learning = flag("Learning")?.unwrap_or(false);
    if config.learning {
        warnings.push("Backend.Learning is ignored: weft never learns MACs from traffic, every entry comes from a lease".into());
    }
    config.direct_routing = flag("DirectRouting")?.unwrap_or(false);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<NetConfig, String> {
        NetConfig::parse_and_check(text).map_err(|e| e.to_string())
    }

    #[test]
    fn default_manifest_config() {
        let c = check(
            r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(c.vxlan, VxlanConfig::default());
        assert_eq!(c.vxlan.port, 4789);
        assert!(c.enable_ipv4 && !c.enable_ipv6);
        c.require_vxlan().unwrap();
        assert_eq!(c.subnets().count(), 255);
        assert_eq!(c.overlay_mtu(1500), 1450);
    }

    #[test]
    fn documented_example_with_min_max_and_len() {
        let c = check(r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0","Backend":{"Type":"udp","Port":7890}}"#).unwrap();
        assert_eq!(c.subnet_len, 20);
        assert_eq!(c.backend_type, "udp");
        assert!(
            c.require_vxlan()
                .unwrap_err()
                .to_string()
                .contains("\"udp\"")
        );
        assert_eq!(c.subnets().next().unwrap().to_string(), "10.10.0.0/20");
        assert_eq!(c.subnets().last().unwrap().to_string(), "10.99.0.0/20");
    }

    #[test]
    fn keys_any_case_and_vxlan_options() {
        let c = check(r#"{"network":"10.5.0.0/16","backend":{"type":"VXLAN","vni":42,"PORT":8472,"mtu":9000}}"#).unwrap();
        assert_eq!(c.vxlan.vni.get(), 42);
        assert_eq!(c.vxlan.port, 8472);
        assert_eq!(c.overlay_mtu(1500), 8950);
    }

    #[test]
    fn subnet_len_defaults_follow_prefix() {
        assert_eq!(
            check(r#"{"Network":"10.0.0.0/23","Backend":{"Type":"vxlan"}}"#)
                .unwrap()
                .subnet_len,
            25
        );
        assert_eq!(
            check(r#"{"Network":"10.0.0.0/28","Backend":{"Type":"vxlan"}}"#)
                .unwrap()
                .subnet_len,
            30
        );
    }

    #[test]
    fn flannels_error_messages() {
        let cases = [
            (
                r#"{"Backend":{"Type":"vxlan"}}"#,
                "please define a correct Network parameter in the flannel config",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#,
                "SubnetLen must be less than /31",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#,
                "network must be able to accommodate at least four subnets",
            ),
            (
                r#"{"Network":"10.0.0.0/29"}"#,
                "network is too small. Minimum useful network prefix is /28",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#,
                "SubnetMin is not in the range of the Network",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMax":"11.0.0.0"}"#,
                "SubnetMax is not in the range of the Network",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.1.128"}"#,
                "SubnetMin is not on a SubnetLen boundary: 10.0.1.128",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMax":"10.0.1.1"}"#,
                "SubnetMax is not on a SubnetLen boundary: 10.0.1.1",
            ),
            (
                r#"{"EnableIPv6":true,"Network":"10.0.0.0/16"}"#,
                "please define a correct IPv6Network parameter in the flannel config",
            ),
            (
                r#"{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fc00::/125"}"#,
                "IPv6Network is too small. Minimum useful network prefix is /124",
            ),
            (
                r#"{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}"#,
                "SubnetLen must be less than /127",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(check(text).unwrap_err(), want, "{text}");
        }
    }

    #[test]
    fn malformed_documents_are_parse_errors() {
        for text in [
            "",
            "{",
            "[]",
            r#"{"Network":"10.0.0.0"}"#,
            r#"{"Network":"fc00::/64"}"#,
            r#"{"Network":5}"#,
            r#"{"Network":"10.0.0.0/16","SubnetLen":"24"}"#,
            r#"{"Network":"10.0.0.0/16","Backend":[1]}"#,
        ] {
            let err = check(text).unwrap_err();
            assert!(
                err.starts_with("error parsing subnet config"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn gbp_refusal_says_why_and_what_to_do() {
        let err = check(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","GBP":true}}"#)
            .unwrap_err();
        assert!(err.contains("not supported by weft"), "{err}");
        assert!(err.contains("skb->mark"), "{err}");
        assert!(err.contains("remove \"GBP\""), "{err}");
        check(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","GBP":false}}"#).unwrap();
    }

    #[test]
    fn bad_vxlan_sections() {
        for text in [
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#,
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","MTU":100}}"#,
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","GBP":true}}"#,
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":"1"}}"#,
        ] {
            let err = check(text).unwrap_err();
            assert!(
                err.starts_with("error decoding VXLAN backend config"),
                "{text}: {err}"
            );
        }
        let c =
            check(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#)
                .unwrap();
        assert!(c.vxlan.direct_routing);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn ipv6_only_configs_are_checked_like_the_v6_half_of_dual_stack() {
        let c = check(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert!(c.ipv6_only());
        assert_eq!(c.network, None);
        assert_eq!(c.ipv6_subnet_len, 64);
        assert_eq!(
            c.ipv6_subnet_min,
            "fd10:244:0:1::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            c.ipv6_subnet_max,
            "fd10:244:0:ff::".parse::<Ipv6Addr>().unwrap()
        );
        // No IPv4 default is filled in: nothing of IPv4 is walked.
        assert_eq!((c.subnet_len, c.subnet_min), (0, Ipv4Addr::UNSPECIFIED));
        assert_eq!(c.subnets().count(), 0);
        c.require_vxlan().unwrap();
        // A Network given anyway is kept but unused.
        let c = check(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"Network":"10.244.0.0/16","IPv6Network":"fd10:244::/56"}"#,
        )
        .unwrap();
        assert!(c.ipv6_only());
        assert_eq!(c.subnet_len, 0);
        // Dual stack and IPv4-only are not IPv6-only.
        assert!(
            !check(r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48"}"#)
                .unwrap()
                .ipv6_only()
        );
        assert!(!check(r#"{"Network":"10.0.0.0/16"}"#).unwrap().ipv6_only());
    }

    #[test]
    fn ipv6_only_without_ipv6_network_or_without_any_family_is_refused() {
        // EnableIPv4 false and IPv6 enabled without IPv6Network: flannel's message.
        for text in [
            r#"{"EnableIPv4":false,"EnableIPv6":true}"#,
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":""}"#,
            r#"{"EnableIPv4":false,"EnableIPv6":true,"Network":"10.0.0.0/16"}"#,
        ] {
            assert_eq!(
                check(text).unwrap_err(),
                "please define a correct IPv6Network parameter in the flannel config",
                "{text}"
            );
        }
        // Neither family: refused, saying what to set.
        for text in [
            r#"{"EnableIPv4":false}"#,
            r#"{"EnableIPv4":false,"IPv6Network":"fd00::/48"}"#,
            r#"{"EnableIPv4":false,"EnableIPv6":false,"Network":"10.0.0.0/16"}"#,
        ] {
            let err = NetConfig::parse_and_check(text).unwrap_err();
            assert_eq!(err, ConfigError::NoAddressFamily, "{text}");
            let msg = err.to_string();
            assert!(msg.contains("neither IPv4 nor IPv6"), "{msg}");
            assert!(msg.contains("\"EnableIPv6\": true"), "{msg}");
            // The unchecked parse (Kubernetes mode) asks the same.
            assert_eq!(
                NetConfig::parse(text).unwrap().require_address_family(),
                Err(ConfigError::NoAddressFamily)
            );
        }
    }

    #[test]
    fn fits_matches_flannels_reuse_rule() {
        let c = check(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert!(c.fits("10.244.7.0/24".parse().unwrap()));
        assert!(!c.fits("10.244.0.0/24".parse().unwrap()));
        assert!(!c.fits("10.244.7.0/25".parse().unwrap()));
        assert!(!c.fits("10.245.7.0/24".parse().unwrap()));
    }
}

#[cfg(test)]
mod shipped_examples {
    use super::*;

    #[test]
    fn example_files_parse() {
        let c = NetConfig::parse_and_check(include_str!("../../tunables/net-conf.json")).unwrap();
        assert_eq!((c.vxlan.vni.get(), c.vxlan.port), (1, 4789));
        c.require_vxlan().unwrap();
        let c =
            NetConfig::parse_and_check(include_str!("../../tunables/net-conf-vni42-port8472.json"))
                .unwrap();
        assert_eq!((c.vxlan.vni.get(), c.vxlan.port), (42, 8472));
        c.require_vxlan().unwrap();
    }
}
