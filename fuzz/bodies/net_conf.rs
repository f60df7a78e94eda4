//! flannel's network configuration (`NetConfig::parse_and_check`), as read
//! from `net-conf.json` or etcd's `<prefix>/config`. Invariants: no panic; a
//! refusal has a message; an accepted config satisfies what
//! `CheckNetworkConfig` promises — SubnetLen within the network with room for
//! four subnets, SubnetMin/Max inside it and aligned, a 24-bit VNI, a
//! non-zero port — its first subnets all `fits`, and checking again changes
//! nothing.
//!
//! Input: the JSON text.

use super::input;
use weft::core::config::NetConfig;

pub fn run(data: &[u8]) {
    let text = input::text(data);
    let parsed = NetConfig::parse(&text);
    let config = match NetConfig::parse_and_check(&text) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert!(parsed.is_ok(), "check accepted what parse refused");
    assert!(
        config.enable_ipv4 || config.enable_ipv6,
        "check accepted a config with neither IPv4 nor IPv6"
    );
    if !config.enable_ipv4 {
        assert_eq!(
            config.subnets().count(),
            0,
            "IPv6-only walks no IPv4 subnet"
        );
    }
    if config.enable_ipv4 {
        let network = config.network.expect("IPv4 needs a network");
        let len = config.subnet_len;
        assert!(
            len <= 30 && len >= network.prefix_len() + 2,
            "SubnetLen {len} in {network}"
        );
        let size = 1u32 << (32 - len);
        for (name, addr) in [
            ("SubnetMin", config.subnet_min),
            ("SubnetMax", config.subnet_max),
        ] {
            assert!(network.contains(&addr), "{name} {addr} outside {network}");
            assert_eq!(
                u32::from(addr) % size,
                0,
                "{name} {addr} unaligned to /{len}"
            );
        }
        for subnet in config.subnets().take(4) {
            assert!(config.fits(subnet), "{subnet} from subnets() does not fit");
            assert_eq!(subnet.prefix_len(), len);
        }
    }
    if config.enable_ipv6 {
        let network = config.ipv6_network.expect("IPv6 needs a network");
        let len = config.ipv6_subnet_len;
        assert!(len <= 126 && len >= network.prefix_len() + 2);
        let size = 1u128 << (128 - len);
        for addr in [config.ipv6_subnet_min, config.ipv6_subnet_max] {
            assert!(network.contains(&addr), "{addr} outside {network}");
            assert_eq!(u128::from(addr) % size, 0);
        }
    }
    let v = config.vxlan;
    assert!(v.vni.get() <= 0x00ff_ffff);
    assert_ne!(v.port, 0);
    assert!(!v.gbp, "GBP is refused");
    if let Some(mtu) = v.mtu {
        assert!((118..=65535).contains(&mtu), "MTU {mtu}");
    }
    let _ = config.require_vxlan();
    for mtu in [0, 1500, u32::MAX] {
        let _ = config.overlay_mtu(mtu);
    }
    let mut again = config.clone();
    assert_eq!(again.check(), Ok(()));
    assert_eq!(again, config, "checking a checked config changes nothing");
}

pub fn seeds() -> Vec<Vec<u8>> {
    [
        include_str!("../../tunables/net-conf.json"),
        include_str!("../../tunables/net-conf-vni42-port8472.json"),
        r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0","Backend":{"Type":"udp","Port":7890}}"#,
        r#"{"network":"10.5.0.0/16","backend":{"type":"VXLAN","vni":42,"PORT":8472,"mtu":9000,"Learning":true,"DirectRouting":true}}"#,
        r#"{"EnableIPv6":true,"Network":"10.244.0.0/16","IPv6Network":"2001:cafe:42::/56","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}"#,
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/120","Backend":{"Type":"vxlan","GBP":false}}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
