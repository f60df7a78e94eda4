//! Lease allocation, flannel's `tryAcquireLease`, as one decision every
//! store that hands out subnets carries out in its own medium (a CAS in
//! etcd, a file under a lock in the directory store):
//!
//! 1. the lease this public IP already holds, if it still fits the config
//!    and has no IPv6 subnet (else it is deleted first);
//! 2. else the lease of the previous `subnet.env`'s subnet if it carries this
//!    node's VtepMAC: the node's address changed (flannel #760, where
//!    flanneld then takes a new subnet and strands its pods), so it is taken
//!    over and rewritten with the new public IP;
//! 3. else the subnet of the previous `subnet.env`, if it fits and is free;
//! 4. else one of the first 100 free subnets, at random;
//! 5. else "out of subnets".
//!
//! A subnet is taken by every lease in the store and by every record that
//! names a subnet but is unusable (a bad value is still someone's claim).

use super::config::NetConfig;
use super::lease::SubnetKey;
use super::mac::MacAddr;
use ipnet::Ipv4Net;
use std::fmt;
use std::net::Ipv4Addr;

/// How many free subnets the random choice is made among (flannel's rule).
const CHOICES: usize = 100;

/// A lease in the store, as allocation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The subnet(s) it holds.
    pub key: SubnetKey,
    /// The node that holds it.
    pub public_ip: Ipv4Addr,
    /// It never expires (etcd: no etcd lease; directory store: no expiration).
    pub reservation: bool,
    /// Its VtepMAC, when it is a vxlan lease.
    pub vtep_mac: Option<MacAddr>,
}

/// What the node asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The node's public IP: a lease it holds is its own.
    pub public_ip: Ipv4Addr,
    /// The subnet of the previous `subnet.env`, reused if still free.
    pub previous_subnet: Option<Ipv4Net>,
    /// The node's VtepMAC: a lease on `previous_subnet` with this MAC is its own.
    pub vtep_mac: Option<MacAddr>,
}

/// How the node gets its subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Write this node's lease again on the subnet it already holds (with a
    /// fresh expiry, unless it is a reservation).
    Reuse {
        /// The subnet held.
        subnet: Ipv4Net,
        /// The lease is a reservation and stays one.
        reservation: bool,
    },
    /// Claim the subnet if nobody holds it (a conflict: plan again).
    Create {
        /// The subnet to claim.
        subnet: Ipv4Net,
        /// It is the subnet of the previous `subnet.env`.
        previous: bool,
    },
}

/// What acquisition will do, decided from one listing of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// This public IP's lease that no longer fits the config: delete it first.
    pub delete: Option<SubnetKey>,
    /// Then this claim.
    pub claim: Claim,
}

/// Every subnet of the network is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfSubnets;

impl fmt::Display for OutOfSubnets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("out of subnets")
    }
}

impl std::error::Error for OutOfSubnets {}

/// Decides how `request` gets a subnet, given the leases the store holds
/// and the subnets of its unusable records.
pub fn plan<R: rand::Rng + ?Sized>(
    config: &NetConfig,
    held: &[Held],
    unusable: &[Ipv4Net],
    request: &Request,
    rng: &mut R,
) -> Result<Plan, OutOfSubnets> {
    let mut delete = None;
    if let Some(mine) = held.iter().find(|h| h.public_ip == request.public_ip) {
        if config.fits(mine.key.subnet) && mine.key.ipv6_subnet.is_none() {
            return Ok(Plan {
                delete: None,
                claim: Claim::Reuse {
                    subnet: mine.key.subnet,
                    reservation: mine.reservation,
                },
            });
        }
        delete = Some(mine.key);
    }
    // This node under another address: same subnet.env subnet, same VtepMAC.
    if let (Some(previous), Some(mac)) = (request.previous_subnet, request.vtep_mac)
        && let Some(moved) = held.iter().find(|h| {
            h.key.subnet == previous && h.key.ipv6_subnet.is_none() && h.vtep_mac == Some(mac)
        })
        && config.fits(previous)
        && Some(moved.key) != delete
    {
        return Ok(Plan {
            delete,
            claim: Claim::Reuse {
                subnet: previous,
                reservation: moved.reservation,
            },
        });
    }
    let taken: Vec<Ipv4Net> = held
        .iter()
        .map(|h| h.key)
        .filter(|k| Some(*k) != delete)
        .map(|k| k.subnet)
        .chain(unusable.iter().copied())
        .collect();
    let free = |s: &Ipv4Net| !taken.iter().any(|t| t.contains(s) || s.contains(t));
    if let Some(previous) = request
        .previous_subnet
        .filter(|s| config.fits(*s) && free(s))
    {
        return Ok(Plan {
            delete,
            claim: Claim::Create {
                subnet: previous,
                previous: true,
            },
        });
    }
    let subnet = choose_free_subnet(config, &taken, rng).ok_or(OutOfSubnets)?;
    Ok(Plan {
        delete,
        claim: Claim::Create {
            subnet,
            previous: false,
        },
    })
}

/// Chooses among free subnets as flannel does: from the first (at most) 100
/// subnets in SubnetMin..SubnetMax that overlap no taken subnet, one at random.
pub fn choose_free_subnet<R: rand::Rng + ?Sized>(
    config: &NetConfig,
    taken: &[Ipv4Net],
    rng: &mut R,
) -> Option<Ipv4Net> {
    use rand::RngExt;
    let free: Vec<Ipv4Net> = config
        .subnets()
        .filter(|s| !taken.iter().any(|t| t.contains(s) || s.contains(t)))
        .take(CHOICES)
        .collect();
    if free.is_empty() {
        return None;
    }
    Some(free[rng.random_range(0..free.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> NetConfig {
        NetConfig::parse_and_check(text).unwrap()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// 10.244.`third`.0/24 held by 192.168.0.`node`.
    fn held(third: u8, node: u8, reservation: bool) -> Held {
        Held {
            key: SubnetKey::v4(Ipv4Net::new(Ipv4Addr::new(10, 244, third, 0), 24).unwrap()),
            public_ip: Ipv4Addr::new(192, 168, 0, node),
            reservation,
            vtep_mac: Some(mac(node)),
        }
    }

    fn request(node: u8, previous: Option<&str>) -> Request {
        Request {
            public_ip: Ipv4Addr::new(192, 168, 0, node),
            previous_subnet: previous.map(net),
            vtep_mac: Some(mac(node)),
        }
    }

    /// Node `node`'s VtepMAC.
    fn mac(node: u8) -> MacAddr {
        MacAddr([0x0e, 0, 0, 0, 0, node])
    }

    #[test]
    fn a_node_whose_address_changed_takes_its_previous_lease_over() {
        let c = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        // Node 1's lease on 10.244.3.0/24 names its old address 192.168.0.9.
        let mut moved = held(3, 9, false);
        moved.vtep_mac = Some(mac(1));
        let leases = [moved, held(4, 2, false)];
        assert_eq!(
            plan_for(&c, &leases, &[], &request(1, Some("10.244.3.0/24"))),
            Plan {
                delete: None,
                claim: Claim::Reuse {
                    subnet: net("10.244.3.0/24"),
                    reservation: false
                }
            }
        );
        // Another node's MAC on that subnet: taken, a new subnet is chosen.
        let leases = [held(3, 9, false)];
        let plan = plan_for(&c, &leases, &[], &request(1, Some("10.244.3.0/24")));
        assert!(
            matches!(
                plan.claim,
                Claim::Create {
                    previous: false,
                    ..
                }
            ),
            "{plan:?}"
        );
    }

    fn plan_for(c: &NetConfig, held: &[Held], unusable: &[Ipv4Net], r: &Request) -> Plan {
        plan(c, held, unusable, r, &mut rand::rng()).unwrap()
    }

    #[test]
    fn the_lease_of_this_public_ip_is_reused_and_a_reservation_stays_one() {
        let c = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let leases = [held(3, 1, false), held(4, 2, false)];
        assert_eq!(
            plan_for(&c, &leases, &[], &request(1, Some("10.244.9.0/24"))),
            Plan {
                delete: None,
                claim: Claim::Reuse {
                    subnet: net("10.244.3.0/24"),
                    reservation: false
                }
            }
        );
        let plan = plan_for(&c, &[held(3, 1, true)], &[], &request(1, None));
        assert_eq!(
            plan.claim,
            Claim::Reuse {
                subnet: net("10.244.3.0/24"),
                reservation: true
            }
        );
    }

    #[test]
    fn an_own_lease_outside_the_config_or_dual_stack_is_deleted_first() {
        let c = config(r#"{"Network":"10.244.0.0/16","SubnetLen":25,"Backend":{"Type":"vxlan"}}"#);
        let plan = plan_for(&c, &[held(3, 1, false)], &[], &request(1, None));
        assert_eq!(plan.delete, Some(held(3, 1, false).key));
        match plan.claim {
            Claim::Create { subnet, previous } => {
                assert!(!previous);
                assert!(c.fits(subnet), "{subnet}");
            }
            other => panic!("{other:?}"),
        }
        let c = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let mut dual = held(3, 1, false);
        dual.key.ipv6_subnet = Some("fd00:3::/64".parse().unwrap());
        let plan = plan_for(&c, &[dual], &[], &request(1, None));
        assert_eq!(
            plan.delete,
            Some(dual.key),
            "the whole key, IPv6 part included"
        );
    }

    #[test]
    fn the_previous_subnet_only_when_free_and_fitting() {
        let c = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let leases = [held(3, 3, false)];
        let unusable = [net("10.244.5.0/24")];
        let create =
            |previous: &str| plan_for(&c, &leases, &unusable, &request(1, Some(previous))).claim;
        assert_eq!(
            create("10.244.9.0/24"),
            Claim::Create {
                subnet: net("10.244.9.0/24"),
                previous: true
            }
        );
        for taken_or_unfit in [
            "10.244.3.0/24",
            "10.244.5.0/24",
            "10.244.0.0/24",
            "10.99.0.0/24",
            "10.244.8.0/25",
        ] {
            match create(taken_or_unfit) {
                Claim::Create { subnet, previous } => {
                    assert!(!previous, "{taken_or_unfit}");
                    assert!(
                        ![net("10.244.3.0/24"), net("10.244.5.0/24")].contains(&subnet),
                        "{subnet}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_random_one_of_the_first_hundred_free_then_out_of_subnets() {
        let c = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let leases: Vec<Held> = (1..=50).map(|i| held(i, i + 100, false)).collect();
        for _ in 0..200 {
            match plan_for(&c, &leases, &[], &request(1, None)).claim {
                Claim::Create { subnet, .. } => {
                    let third = subnet.network().octets()[2];
                    assert!((51..=150).contains(&third), "{subnet}");
                }
                other => panic!("{other:?}"),
            }
        }
        let small = config(r#"{"Network":"10.0.0.0/28","Backend":{"Type":"vxlan"}}"#);
        let full: Vec<Held> = small
            .subnets()
            .enumerate()
            .map(|(i, s)| Held {
                key: SubnetKey::v4(s),
                public_ip: Ipv4Addr::new(192, 168, 1, i as u8),
                reservation: false,
                vtep_mac: None,
            })
            .collect();
        let err = plan(&small, &full, &[], &request(1, None), &mut rand::rng()).unwrap_err();
        assert_eq!(err.to_string(), "out of subnets");
    }

    #[test]
    fn choice_skips_taken_and_stays_in_first_hundred() {
        let config =
            config(r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#);
        let taken = [net("10.0.1.0/24"), net("10.0.2.0/23")];
        let mut rng = rand::rng();
        for _ in 0..200 {
            let s = choose_free_subnet(&config, &taken, &mut rng).unwrap();
            assert!(!taken.iter().any(|t| t.contains(&s)), "{s}");
            let third = s.network().octets()[2];
            assert!((4..=103).contains(&third), "{s}");
        }
        let tiny =
            NetConfig::parse_and_check(r#"{"Network":"10.0.0.0/28","Backend":{"Type":"vxlan"}}"#)
                .unwrap();
        let all: Vec<Ipv4Net> = tiny.subnets().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(choose_free_subnet(&tiny, &all, &mut rand::rng()), None);
    }
}
