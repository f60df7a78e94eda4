//! `allocate::plan`: flannel's lease allocation from an arbitrary store
//! listing (leases of any size and owner, unusable records' subnets, a
//! previous subnet). Invariants, against a reference written here: a reused
//! lease is this public IP's own and fits the config; a created subnet fits
//! the config, is the previous subnet exactly when that one was free and
//! fitting, and overlaps nothing taken (the lease deleted first excepted);
//! the lease deleted first is this public IP's and did not fit; "out of
//! subnets" only when no subnet of the config is free; a lease of another
//! public IP is taken over only on the previous subnet and when it carries
//! this node's VtepMAC (the node's address changed).
//!
//! Input: `[config][request ip][previous]` then leases as
//! `[third][len][owner][flags]` (flags: reservation, dual stack, unusable,
//! carries the requesting node's VtepMAC).

use super::input::{Builder, Input};
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::Ipv4Addr;
use weft::core::allocate::{self, Claim, Held, Request};
use weft::core::config::NetConfig;
use weft::core::lease::SubnetKey;
use weft::core::mac::MacAddr;

const CONFIGS: [&str; 4] = [
    r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    r#"{"Network":"10.244.0.0/16","SubnetLen":25,"Backend":{"Type":"vxlan"}}"#,
    r#"{"Network":"10.0.0.0/28","Backend":{"Type":"vxlan"}}"#,
    r#"{"Network":"10.244.0.0/22","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0","Backend":{"Type":"vxlan"}}"#,
];

/// The VtepMAC of node `n`.
fn mac(n: u8) -> MacAddr {
    MacAddr([0x0e, 0, 0, 0, 0, n])
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
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
    let mut held = Vec::new();
    let mut unusable = Vec::new();
    while !input.is_empty() && held.len() + unusable.len() < 40 {
        let (third, len, owner, flags) = (input.u8(), input.u8(), input.u8(), input.u8());
        let len = 20 + len % 9;
        let Ok(subnet) = Ipv4Net::new(Ipv4Addr::new(10, 244, third, 0), len).map(|n| n.trunc())
        else {
            continue;
        };
        if flags & 4 != 0 {
            unusable.push(subnet);
            continue;
        }
        let ipv6_subnet = (flags & 2 != 0).then(|| "fd00::/64".parse::<Ipv6Net>().expect("v6"));
        held.push(Held {
            key: SubnetKey {
                subnet,
                ipv6_subnet,
            },
            public_ip: Ipv4Addr::new(192, 168, 0, owner % 8),
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
        previous_subnet: previous,
        vtep_mac: Some(mac(me.octets()[3])),
    };
    let mine = held.iter().find(|h| h.public_ip == me);
    let result = allocate::plan(&config, &held, &unusable, &request, &mut rand::rng());
    let plan = match result {
        Ok(plan) => plan,
        Err(_) => {
            let deleted = mine.map(|m| m.key);
            let taken: Vec<Ipv4Net> = held
                .iter()
                .filter(|h| Some(h.key) != deleted)
                .map(|h| h.key.subnet)
                .chain(unusable.iter().copied())
                .collect();
            assert!(
                config
                    .subnets()
                    .all(|s| taken.iter().any(|t| overlaps(t, &s))),
                "out of subnets with a free subnet left"
            );
            return;
        }
    };
    if let Claim::Reuse {
        subnet,
        reservation,
    } = plan.claim
    {
        match mine.filter(|m| config.fits(m.key.subnet) && m.key.ipv6_subnet.is_none()) {
            Some(mine) => {
                assert_eq!((mine.key.subnet, mine.reservation), (subnet, reservation));
                assert_eq!(plan.delete, None);
            }
            None => {
                // This node under another address: its lease on the previous
                // subnet, known by its VtepMAC.
                let moved = held
                    .iter()
                    .find(|h| {
                        Some(h.key.subnet) == previous
                            && h.key.ipv6_subnet.is_none()
                            && h.vtep_mac == request.vtep_mac
                    })
                    .expect("took over a lease without this node's VtepMAC");
                assert_eq!((moved.key.subnet, moved.reservation), (subnet, reservation));
                assert!(config.fits(subnet));
                assert_eq!(plan.delete, mine.map(|m| m.key));
            }
        }
        return;
    }
    let Claim::Create {
        subnet,
        previous: was_previous,
    } = plan.claim
    else {
        unreachable!()
    };
    match (mine, plan.delete) {
        (Some(m), Some(d)) => {
            assert_eq!(m.key, d);
            assert!(!config.fits(m.key.subnet) || m.key.ipv6_subnet.is_some());
        }
        (None, None) => {}
        other => panic!(
            "delete {:?} for own lease {:?}",
            other.1,
            other.0.map(|m| m.key)
        ),
    }
    assert!(config.fits(subnet), "{subnet} does not fit");
    let taken: Vec<Ipv4Net> = held
        .iter()
        .filter(|h| Some(h.key) != plan.delete)
        .map(|h| h.key.subnet)
        .chain(unusable.iter().copied())
        .collect();
    assert!(
        !taken.iter().any(|t| overlaps(t, &subnet)),
        "{subnet} is taken"
    );
    let previous_free =
        previous.filter(|p| config.fits(*p) && !taken.iter().any(|t| overlaps(t, p)));
    assert_eq!(was_previous, previous_free.is_some());
    if was_previous {
        assert_eq!(Some(subnet), previous);
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    let lease = |b: Builder, third: u8, len: u8, owner: u8, flags: u8| {
        b.u8(third).u8(len).u8(owner).u8(flags)
    };
    vec![
        lease(
            lease(Builder::new().u8(0).u8(1).u8(18), 3, 4, 1, 0),
            4,
            4,
            2,
            1,
        )
        .build(),
        lease(Builder::new().u8(1).u8(1).u8(0), 3, 4, 1, 0).build(),
        lease(
            lease(Builder::new().u8(2).u8(3).u8(0), 0, 8, 1, 0),
            0,
            8,
            2,
            4,
        )
        .build(),
        lease(Builder::new().u8(0).u8(5).u8(0), 9, 4, 5, 2).build(),
    ]
}
