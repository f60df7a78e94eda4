//! `allocate::plan`: flannel's lease allocation from an arbitrary store
//! listing (leases of any size and owner, IPv4-only or dual stack, unusable
//! records' keys, a previous subnet pair), under IPv4-only and dual-stack
//! configs. Invariants, against a reference written here (flannel's
//! `isSubnetConfigCompat` and `isIPv6SubnetConfigCompat`): a reused lease is
//! this public IP's own and fits the config in both families; a created key
//! fits, is the previous pair exactly when that pair fits and both its
//! subnets are free, and overlaps nothing taken in either family (the lease
//! deleted first excepted); the lease deleted first is this public IP's and
//! did not fit; "out of subnets" only when no IPv4 subnet, or (IPv6 on) no
//! IPv6 subnet, of the config is free; a lease of another public IP is taken
//! over only on the previous pair and when it carries this node's VtepMAC
//! (the node's address changed).
//!
//! Input: `[config][request ip][previous][previous v6]` then leases as
//! `[third][len][owner][flags]`, followed by `[v6]` when the lease is dual
//! stack (flags: reservation, dual stack, unusable, carries the requesting
//! node's VtepMAC).

use super::input::{Builder, Input};
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};
use weft::core::allocate::{self, AllocError, Claim, Held, Request};
use weft::core::config::NetConfig;
use weft::core::lease::SubnetKey;
use weft::core::mac::MacAddr;

const CONFIGS: [&str; 6] = [
    r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    r#"{"Network":"10.244.0.0/16","SubnetLen":25,"Backend":{"Type":"vxlan"}}"#,
    r#"{"Network":"10.0.0.0/28","Backend":{"Type":"vxlan"}}"#,
    r#"{"Network":"10.244.0.0/22","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0","Backend":{"Type":"vxlan"}}"#,
    r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMax":"fd00:0:0:80::","Backend":{"Type":"vxlan"}}"#,
    r#"{"Network":"10.244.0.0/22","EnableIPv6":true,"IPv6Network":"fd00::/62","Backend":{"Type":"vxlan"}}"#,
];

/// The VtepMAC of node `n`.
fn mac(n: u8) -> MacAddr {
    MacAddr([0x0e, 0, 0, 0, 0, n])
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn overlaps6(a: &Ipv6Net, b: &Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// fd00:0:0:`b`:: with a prefix around the configs' /64, chosen by `len`.
fn v6_subnet(b: u8, len: u8) -> Ipv6Net {
    // A lease's `len` byte 49 (0x31): /24 and /64.
    let len = [60, 62, 63, 64, 64, 64, 65, 80][usize::from(len % 8)];
    Ipv6Net::new(Ipv6Addr::new(0xfd00, 0, 0, u16::from(b), 0, 0, 0, 0), len)
        .expect("a valid prefix")
        .trunc()
}

/// flannel's compatibility rule for both families, written independently.
fn compatible(config: &NetConfig, key: SubnetKey) -> bool {
    let v6 = match (config.enable_ipv6, key.ipv6_subnet) {
        (false, v6) => v6.is_none(),
        (true, None) => false,
        (true, Some(s)) => {
            s.prefix_len() == config.ipv6_subnet_len
                && s.network() >= config.ipv6_subnet_min
                && s.network() <= config.ipv6_subnet_max
        }
    };
    config.fits(key.subnet) && v6
}

/// Every IPv6 subnet of the config (the lab configs have at most 128).
fn v6_subnets(config: &NetConfig) -> Vec<Ipv6Net> {
    let size = 1u128 << (128 - u32::from(config.ipv6_subnet_len));
    let (min, max) = (
        u128::from(config.ipv6_subnet_min),
        u128::from(config.ipv6_subnet_max),
    );
    (0..)
        .map(|i| min + i * size)
        .take_while(|s| *s <= max)
        .map(|s| Ipv6Net::new(Ipv6Addr::from(s), config.ipv6_subnet_len).expect("valid"))
        .collect()
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let config = NetConfig::parse_and_check(CONFIGS[usize::from(input.u8()) % CONFIGS.len()])
        .expect("the lab configs are valid");
    let me = Ipv4Addr::new(192, 168, 0, input.u8() % 8);
    let previous = match input.u8() {
        0 => None,
        p => Ipv4Net::new(Ipv4Addr::new(10, 244, p / 2, (p % 2) * 128), 24 + p % 2).ok(),
    };
    let previous_v6 = match input.u8() {
        0 => None,
        p => Some(v6_subnet(p / 2, if p % 2 == 0 { 3 } else { 7 })),
    };
    let mut held = Vec::new();
    let mut unusable = Vec::new();
    while !input.is_empty() && held.len() + unusable.len() < 40 {
        let (third, len, owner, flags) = (input.u8(), input.u8(), input.u8(), input.u8());
        let ipv6_subnet = (flags & 2 != 0).then(|| {
            let b = input.u8();
            v6_subnet(b, len >> 4)
        });
        let len = 20 + len % 9;
        let Ok(subnet) = Ipv4Net::new(Ipv4Addr::new(10, 244, third, 0), len).map(|n| n.trunc())
        else {
            continue;
        };
        let key = SubnetKey {
            subnet,
            ipv6_subnet,
        };
        if flags & 4 != 0 {
            unusable.push(key);
            continue;
        }
        held.push(Held {
            key,
            public_ip: Ipv4Addr::new(192, 168, 0, owner % 8),
            public_ipv6: None,
            reservation: flags & 1 != 0,
            vtep_mac: Some(if flags & 8 != 0 {
                mac(me.octets()[3])
            } else {
                mac(owner % 8)
            }),
        });
    }
    let request = Request {
        public_ip: me,
        public_ipv6: None,
        previous_subnet: previous,
        previous_ipv6_subnet: previous_v6,
        vtep_mac: Some(mac(me.octets()[3])),
    };
    let previous_key = previous.map(|subnet| SubnetKey {
        subnet,
        ipv6_subnet: previous_v6,
    });
    let mine = held.iter().find(|h| h.public_ip == me);
    let taken_but = |deleted: Option<SubnetKey>| -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
        let keys: Vec<SubnetKey> = held
            .iter()
            .map(|h| h.key)
            .filter(|k| Some(*k) != deleted)
            .chain(unusable.iter().copied())
            .collect();
        (
            keys.iter().map(|k| k.subnet).collect(),
            keys.iter().filter_map(|k| k.ipv6_subnet).collect(),
        )
    };
    let result = allocate::plan(&config, &held, &unusable, &request, &mut rand::rng());
    let plan = match result {
        Ok(plan) => plan,
        Err(e) => {
            assert_eq!(e, AllocError::OutOfSubnets, "the lab configs are plannable");
            let (taken, taken6) = taken_but(mine.map(|m| m.key));
            let no_v4 = config
                .subnets()
                .all(|s| taken.iter().any(|t| overlaps(t, &s)));
            let no_v6 = config.enable_ipv6
                && v6_subnets(&config)
                    .iter()
                    .all(|s| taken6.iter().any(|t| overlaps6(t, s)));
            assert!(no_v4 || no_v6, "out of subnets with a free pair left");
            return;
        }
    };
    if let Claim::Reuse { key, reservation } = plan.claim {
        assert!(compatible(&config, key), "reused {key}, which does not fit");
        match mine.filter(|m| compatible(&config, m.key)) {
            Some(mine) => {
                assert_eq!((mine.key, mine.reservation), (key, reservation));
                assert_eq!(plan.delete, None);
            }
            None => {
                // This node under another address: its lease on the previous
                // pair, known by its VtepMAC.
                let moved = held
                    .iter()
                    .find(|h| Some(h.key) == previous_key && h.vtep_mac == request.vtep_mac)
                    .expect("took over a lease without this node's VtepMAC");
                assert_eq!((moved.key, moved.reservation), (key, reservation));
                assert_eq!(plan.delete, mine.map(|m| m.key));
            }
        }
        return;
    }
    let Claim::Create {
        key,
        previous: was_previous,
    } = plan.claim
    else {
        unreachable!()
    };
    match (mine, plan.delete) {
        (Some(m), Some(d)) => {
            assert_eq!(m.key, d);
            assert!(!compatible(&config, m.key));
        }
        (None, None) => {}
        other => panic!(
            "delete {:?} for own lease {:?}",
            other.1,
            other.0.map(|m| m.key)
        ),
    }
    assert!(compatible(&config, key), "{key} does not fit");
    let (taken, taken6) = taken_but(plan.delete);
    assert!(
        !taken.iter().any(|t| overlaps(t, &key.subnet)),
        "{key} is taken"
    );
    if let Some(v6) = key.ipv6_subnet {
        assert!(
            !taken6.iter().any(|t| overlaps6(t, &v6)),
            "{key}: the IPv6 subnet is taken"
        );
    }
    let previous_free = previous_key.filter(|p| {
        compatible(&config, *p)
            && !taken.iter().any(|t| overlaps(t, &p.subnet))
            && p.ipv6_subnet
                .is_none_or(|s| !taken6.iter().any(|t| overlaps6(t, &s)))
    });
    assert_eq!(was_previous, previous_free.is_some());
    if was_previous {
        assert_eq!(Some(key), previous_key);
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    let lease = |b: Builder, third: u8, len: u8, owner: u8, flags: u8| {
        b.u8(third).u8(len).u8(owner).u8(flags)
    };
    vec![
        lease(
            lease(Builder::new().u8(0).u8(1).u8(18).u8(0), 3, 4, 1, 0),
            4,
            4,
            2,
            1,
        )
        .build(),
        lease(Builder::new().u8(1).u8(1).u8(0).u8(0), 3, 4, 1, 0).build(),
        lease(
            lease(Builder::new().u8(2).u8(3).u8(0).u8(0), 0, 8, 1, 0),
            0,
            8,
            2,
            4,
        )
        .build(),
        lease(Builder::new().u8(0).u8(5).u8(0).u8(0), 9, 4, 5, 2)
            .u8(9)
            .build(),
        // Dual stack: this node's fitting pair, another node's pair, the
        // previous pair of a moved node carrying this node's MAC.
        lease(
            lease(Builder::new().u8(4).u8(1).u8(18).u8(18), 3, 49, 1, 2).u8(2),
            5,
            49,
            2,
            2,
        )
        .u8(4)
        .build(),
        lease(Builder::new().u8(4).u8(1).u8(18).u8(18), 9, 49, 5, 2 | 8)
            .u8(9)
            .build(),
        // The small v6 config, its three v6 subnets held: out of subnets.
        lease(
            lease(
                lease(Builder::new().u8(5).u8(1).u8(0).u8(0), 1, 49, 2, 2).u8(1),
                2,
                49,
                3,
                2,
            )
            .u8(2),
            3,
            49,
            4,
            2,
        )
        .u8(3)
        .build(),
    ]
}
