//! `subnet.env`, the file the CNI plugin reads: flannel's exact format.
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.1.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```
//!
//! Dual stack adds `FLANNEL_IPV6_NETWORK` and `FLANNEL_IPV6_SUBNET`; an
//! IPv6-only network has those and no IPv4 lines.

use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The values of a `subnet.env`. Subnets are the lease subnets (network address);
/// rendering writes the first host address, as flannel does.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`.
    pub network: Option<Ipv4Net>,
    /// `FLANNEL_SUBNET` (the lease subnet).
    pub subnet: Option<Ipv4Net>,
    /// `FLANNEL_IPV6_NETWORK`.
    pub ipv6_network: Option<Ipv6Net>,
    /// `FLANNEL_IPV6_SUBNET`.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`.
    pub ip_masq: bool,
}

/// A `subnet.env` that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetEnvError {
    /// A line that is not `KEY=VALUE`.
    #[error("line {line}: {text:?} is not KEY=VALUE")]
    BadLine {
        /// The line number, from 1.
        line: usize,
        /// The line.
        text: String,
    },
    /// A value that does not parse.
    #[error("{key}: {value:?} is not valid: {why}")]
    BadValue {
        /// The key.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// A required key is absent.
    #[error("missing {0}")]
    Missing(String),
}

impl SubnetEnv {
    /// flannel's `WriteSubnetFile` text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let (Some(network), Some(subnet)) = (self.network, self.subnet) {
            out.push_str(&format!("FLANNEL_NETWORK={network}\n"));
            let first = Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1));
            out.push_str(&format!("FLANNEL_SUBNET={first}/{}\n", subnet.prefix_len()));
        }
        if let (Some(network), Some(subnet)) = (self.ipv6_network, self.ipv6_subnet) {
            out.push_str(&format!("FLANNEL_IPV6_NETWORK={network}\n"));
            let first = Ipv6Addr::from(u128::from(subnet.network()).wrapping_add(1));
            out.push_str(&format!(
                "FLANNEL_IPV6_SUBNET={first}/{}\n",
                subnet.prefix_len()
            ));
        }
        out.push_str(&format!("FLANNEL_MTU={}\n", self.mtu));
        out.push_str(&format!("FLANNEL_IPMASQ={}\n", self.ip_masq));
        out
    }

    /// Reads a `subnet.env` as flannel's CNI plugin does. Blank lines and `#`
    /// comments are skipped; subnets come back as networks (`10.1.17.1/24` →
    /// `10.1.17.0/24`). A comma list keeps its first entry.
    pub fn parse(text: &str) -> Result<SubnetEnv, SubnetEnvError> {
        let mut env = SubnetEnv::default();
        let mut saw_mtu = false;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| SubnetEnvError::BadLine {
                    line: i + 1,
                    text: raw.to_owned(),
                })?;
            let (key, value) = (key.trim(), value.trim().trim_matches('"'));
            let first = value.split(',').next().unwrap_or("").trim();
            let bad = |why: &str| SubnetEnvError::BadValue {
                key: key.to_owned(),
                value: value.to_owned(),
                why: why.to_owned(),
            };
            match key {
                "FLANNEL_NETWORK" => {
                    env.network = Some(
                        first
                            .parse::<Ipv4Net>()
                            .map_err(|_| bad("not an IPv4 CIDR"))?
                            .trunc(),
                    )
                }
                "FLANNEL_SUBNET" => {
                    env.subnet = Some(
                        first
                            .parse::<Ipv4Net>()
                            .map_err(|_| bad("not an IPv4 CIDR"))?
                            .trunc(),
                    )
                }
                "FLANNEL_IPV6_NETWORK" => {
                    env.ipv6_network = Some(
                        first
                            .parse::<Ipv6Net>()
                            .map_err(|_| bad("not an IPv6 CIDR"))?
                            .trunc(),
                    )
                }
                "FLANNEL_IPV6_SUBNET" => {
                    env.ipv6_subnet = Some(
                        first
                            .parse::<Ipv6Net>()
                            .map_err(|_| bad("not an IPv6 CIDR"))?
                            .trunc(),
                    )
                }
                "FLANNEL_MTU" => {
                    env.mtu = value.parse().map_err(|_| bad("not an unsigned integer"))?;
                    saw_mtu = true;
                }
                "FLANNEL_IPMASQ" => env.ip_masq = value == "true",
                _ => {}
            }
        }
        if env.network.is_none() && env.ipv6_network.is_none() {
            return Err(SubnetEnvError::Missing(
                "FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK".into(),
            ));
        }
        if env.network.is_some() && env.subnet.is_none() {
            return Err(SubnetEnvError::Missing("FLANNEL_SUBNET".into()));
        }
        if env.ipv6_network.is_some() && env.ipv6_subnet.is_none() {
            return Err(SubnetEnvError::Missing("FLANNEL_IPV6_SUBNET".into()));
        }
        if !saw_mtu {
            return Err(SubnetEnvError::Missing("FLANNEL_MTU".into()));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flannels_format() {
        let env = SubnetEnv {
            network: Some("10.244.0.0/16".parse().unwrap()),
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            mtu: 1450,
            ..Default::default()
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(SubnetEnv::parse(&env.render()).unwrap(), env);
    }

    #[test]
    fn dual_stack_round_trip() {
        let env = SubnetEnv {
            network: Some("10.244.0.0/16".parse().unwrap()),
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            ipv6_network: Some("2001:cafe:42::/56".parse().unwrap()),
            ipv6_subnet: Some("2001:cafe:42::/64".parse().unwrap()),
            mtu: 1450,
            ip_masq: true,
        };
        let text = env.render();
        assert!(
            text.contains("FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n"),
            "{text}"
        );
        assert!(text.ends_with("FLANNEL_IPMASQ=true\n"));
        assert_eq!(SubnetEnv::parse(&text).unwrap(), env);
    }

    #[test]
    fn ipv6_only_has_no_ipv4_lines_and_round_trips() {
        // flannel writes FLANNEL_NETWORK/FLANNEL_SUBNET only with EnableIPv4.
        let env = SubnetEnv {
            ipv6_network: Some("fd10:244::/56".parse().unwrap()),
            ipv6_subnet: Some("fd10:244:0:3::/64".parse().unwrap()),
            mtu: 1430,
            ip_masq: true,
            ..Default::default()
        };
        let text = env.render();
        assert_eq!(
            text,
            "FLANNEL_IPV6_NETWORK=fd10:244::/56\nFLANNEL_IPV6_SUBNET=fd10:244:0:3::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
        );
        let back = SubnetEnv::parse(&text).unwrap();
        assert_eq!(back, env);
        // What the agent takes from it on restart: no IPv4 subnet, the IPv6 one.
        assert_eq!(back.subnet, None);
        assert_eq!(back.ipv6_subnet, env.ipv6_subnet);
        assert_eq!(
            SubnetEnv::parse("FLANNEL_IPV6_NETWORK=fd10:244::/56\nFLANNEL_MTU=1430\n")
                .unwrap_err()
                .to_string(),
            "missing FLANNEL_IPV6_SUBNET"
        );
    }

    #[test]
    fn parse_errors_name_what_is_wrong() {
        assert_eq!(
            SubnetEnv::parse("FLANNEL_MTU=1450\n")
                .unwrap_err()
                .to_string(),
            "missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK"
        );
        assert!(
            SubnetEnv::parse("garbage\n")
                .unwrap_err()
                .to_string()
                .contains("not KEY=VALUE")
        );
        assert!(
            SubnetEnv::parse("FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=x\nFLANNEL_MTU=1\n")
                .is_err()
        );
        assert_eq!(
            SubnetEnv::parse("FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.1.2.1/24\n")
                .unwrap_err()
                .to_string(),
            "missing FLANNEL_MTU"
        );
    }
}
