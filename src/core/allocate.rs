//! Lease allocation, flannel's `tryAcquireLease`, as one decision every
//! store that hands out subnets carries out in its own medium (a CAS in
//! etcd, a file under a lock in the directory store). A lease is an IPv4
//! subnet and, when `EnableIPv6` is set, an IPv6 subnet (key
//! `10.5.34.0-24&fc00::-64`):
//!
//! 1. the lease this public IP already holds, if it still fits the config
//!    (its IPv4 subnet in SubnetMin..SubnetMax with SubnetLen; with IPv6 on,
//!    an IPv6 subnet in IPv6SubnetMin..IPv6SubnetMax with IPv6SubnetLen; with
//!    IPv6 off, none); else it is deleted first;
//! 2. else the lease of the previous `subnet.env`'s subnet pair if it carries
//!    this node's VtepMAC: the node's address changed (flannel #760, where
//!    flanneld then takes a new subnet and strands its pods), so it is taken
//!    over and rewritten with the new public IP;
//! 3. else the subnet pair of the previous `subnet.env`, if it fits and both
//!    subnets are free (flannel checks the IPv4 one only);
//! 4. else one of the first 100 free IPv4 subnets at random and, with IPv6
//!    on, independently one of the first 100 free IPv6 subnets;
//! 5. else "out of subnets" (of either family).
//!
//! A subnet is taken by every lease in the store and by every record that
//! names a subnet but is unusable (a bad value is still someone's claim).
//!
//! IPv6-only (`EnableIPv4: false`, `EnableIPv6: true`): the same steps with
//! the IPv6 half alone. A lease is [`NO_IPV4_SUBNET`] and an IPv6 subnet
//! (key `0.0.0.0-0&fd00:0:0:3::-64`); the node's own lease is the one with
//! its `PublicIPv6` (every IPv6-only lease has `PublicIP` 0.0.0.0), and the
//! previous `subnet.env`'s `FLANNEL_IPV6_SUBNET` is reused when free. An
//! IPv6-only lease takes no IPv4 subnet: its zero subnet never counts as taken.

use super::config::NetConfig;
use super::lease::{Lease, LeaseAttrs, NO_IPV4_SUBNET, SubnetKey};
use super::mac::MacAddr;
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// How many free subnets the random choice is made among (flannel's rule).
const CHOICES: usize = 100;

/// A lease in the store, as allocation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The subnet(s) it holds.
    pub key: SubnetKey,
    /// The node that holds it (0.0.0.0 for an IPv6-only lease).
    pub public_ip: Ipv4Addr,
    /// The node's `PublicIPv6`, if the lease has one: what tells an IPv6-only
    /// node's own lease.
    pub public_ipv6: Option<Ipv6Addr>,
    /// It never expires (etcd: no etcd lease; directory store: no expiration).
    pub reservation: bool,
    /// Its VtepMAC, when it is a vxlan lease (of `BackendV6Data` for an
    /// IPv6-only lease, which has no `BackendData`).
    pub vtep_mac: Option<MacAddr>,
}

impl Held {
    /// A stored lease as allocation sees it.
    pub fn of(lease: &Lease, reservation: bool) -> Held {
        Held {
            key: lease.subnet_key(),
            public_ip: lease.attrs.public_ip,
            public_ipv6: lease.attrs.public_ipv6,
            reservation,
            vtep_mac: vtep_mac(&lease.attrs),
        }
    }
}

/// The VtepMAC that tells a node's leases (allocation's "same node under
/// another address" test): of `BackendData`, or of `BackendV6Data` when
/// there is none (an IPv6-only lease).
pub fn vtep_mac(attrs: &LeaseAttrs) -> Option<MacAddr> {
    attrs
        .vxlan_data()
        .or_else(|_| attrs.vxlan_v6_data())
        .ok()
        .map(|d| d.vtep_mac)
}

/// What the node asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The node's public IP: a lease it holds is its own (not in an
    /// IPv6-only network, where every lease has 0.0.0.0).
    pub public_ip: Ipv4Addr,
    /// The node's public IPv6: in an IPv6-only network, a lease with it is
    /// its own.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The IPv4 subnet of the previous `subnet.env` (`FLANNEL_SUBNET`), reused if still free.
    pub previous_subnet: Option<Ipv4Net>,
    /// The IPv6 subnet of the previous `subnet.env` (`FLANNEL_IPV6_SUBNET`):
    /// with IPv6 on, the pair is reused only with it.
    pub previous_ipv6_subnet: Option<Ipv6Net>,
    /// The node's VtepMAC (IPv6-only: its IPv6 VtepMAC): a lease on the
    /// previous subnets with this MAC is its own.
    pub vtep_mac: Option<MacAddr>,
}

impl Request {
    /// The previous `subnet.env`'s subnets as a key, if it named an IPv4
    /// subnet (host bits cleared: `subnet.env` names the gateway address).
    pub fn previous(&self) -> Option<SubnetKey> {
        self.previous_subnet.map(|subnet| SubnetKey {
            subnet: subnet.trunc(),
            ipv6_subnet: self.previous_ipv6_subnet.map(|s| s.trunc()),
        })
    }

    /// The previous `subnet.env`'s subnets as the key `config` would hand
    /// out: IPv6-only, the IPv6 subnet alone (an IPv4 one, left from an
    /// earlier run, is ignored); else [`Request::previous`].
    pub fn previous_for(&self, config: &NetConfig) -> Option<SubnetKey> {
        if config.enable_ipv4 {
            return self.previous();
        }
        self.previous_ipv6_subnet
            .map(|s| SubnetKey::v6_only(s.trunc()))
    }
}

/// How the node gets its subnet(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Write this node's lease again on the key it already holds (with a
    /// fresh expiry, unless it is a reservation).
    Reuse {
        /// The subnets held.
        key: SubnetKey,
        /// The lease is a reservation and stays one.
        reservation: bool,
    },
    /// Claim the key if nobody holds it (a conflict: plan again).
    Create {
        /// The subnets to claim.
        key: SubnetKey,
        /// They are the subnets of the previous `subnet.env`.
        previous: bool,
    },
}

impl Claim {
    /// The subnets the node ends up with.
    pub fn key(&self) -> SubnetKey {
        match *self {
            Claim::Reuse { key, .. } | Claim::Create { key, .. } => key,
        }
    }
}

/// What acquisition will do, decided from one listing of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// This public IP's lease that no longer fits the config: delete it first.
    pub delete: Option<SubnetKey>,
    /// Then this claim.
    pub claim: Claim,
}

/// Why no plan can be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every subnet of the network (IPv4, or IPv6 when enabled) is taken.
    #[error("out of subnets")]
    OutOfSubnets,
    /// `EnableIPv4` is on but `Network` is missing or unchecked.
    #[error(
        "EnableIPv4 is set (the default) but the config has no usable IPv4 Network (missing, or SubnetLen/Min/Max unset): set Network, or for an IPv6-only network set \"EnableIPv4\": false with EnableIPv6 and IPv6Network"
    )]
    NoIpv4Network,
    /// Neither `EnableIPv4` nor `EnableIPv6`: nothing to allocate.
    #[error(
        "the config enables neither IPv4 nor IPv6 (EnableIPv4 false, EnableIPv6 not true): enable at least one, with its Network or IPv6Network"
    )]
    NoAddressFamily,
    /// `EnableIPv6` is on but `IPv6Network` is missing or unchecked.
    #[error(
        "EnableIPv6 is set but the config has no usable IPv6Network (missing, or IPv6SubnetLen/Min/Max unset): set IPv6Network or turn EnableIPv6 off"
    )]
    NoIpv6Network,
}

/// Whether `subnet` is a v6 subnet this configuration could hand out, or
/// the absence of one is right (flannel's `isIPv6SubnetConfigCompat`): with
/// IPv6 on, present, within IPv6SubnetMin..IPv6SubnetMax and of
/// IPv6SubnetLen; with IPv6 off, absent.
pub fn fits_v6(config: &NetConfig, subnet: Option<Ipv6Net>) -> bool {
    if !config.enable_ipv6 {
        return subnet.is_none();
    }
    subnet.is_some_and(|s| {
        config.ipv6_network.is_some_and(|n| n.contains(&s))
            && s.prefix_len() == config.ipv6_subnet_len
            && s.network() >= config.ipv6_subnet_min
            && s.network() <= config.ipv6_subnet_max
    })
}

/// Whether a lease key fits the config in both families (what makes an own
/// lease, or the previous `subnet.env`, reusable). IPv6-only: the key has no
/// IPv4 half ([`NO_IPV4_SUBNET`]) and its IPv6 subnet fits.
pub fn fits(config: &NetConfig, key: SubnetKey) -> bool {
    let v4 = match config.enable_ipv4 {
        true => config.fits(key.subnet),
        false => !key.has_ipv4(),
    };
    v4 && fits_v6(config, key.ipv6_subnet)
}

/// Refuses configs that plan cannot walk (not checked, or no family at all).
fn check_config(config: &NetConfig) -> Result<(), AllocError> {
    if !config.enable_ipv4 && !config.enable_ipv6 {
        return Err(AllocError::NoAddressFamily);
    }
    let v4_ok = config.network.is_some()
        && (1..=32).contains(&config.subnet_len)
        && config.subnet_min <= config.subnet_max;
    if config.enable_ipv4 && !v4_ok {
        return Err(AllocError::NoIpv4Network);
    }
    if config.enable_ipv6 {
        let v6_ok = config.ipv6_network.is_some()
            && (1..=128).contains(&config.ipv6_subnet_len)
            && config.ipv6_subnet_min <= config.ipv6_subnet_max;
        if !v6_ok {
            return Err(AllocError::NoIpv6Network);
        }
    }
    Ok(())
}

/// Decides how `request` gets its subnet(s), given the leases the store
/// holds and the keys of its unusable records.
pub fn plan<R: rand::Rng + ?Sized>(
    config: &NetConfig,
    held: &[Held],
    unusable: &[SubnetKey],
    request: &Request,
    rng: &mut R,
) -> Result<Plan, AllocError> {
    check_config(config)?;
    let mut delete = None;
    if let Some(mine) = own_lease(config, held, request) {
        if fits(config, mine.key) {
            return Ok(Plan {
                delete: None,
                claim: Claim::Reuse {
                    key: mine.key,
                    reservation: mine.reservation,
                },
            });
        }
        delete = Some(mine.key);
    }
    let previous = request.previous_for(config);
    // This node under another address: same subnet.env subnets, same VtepMAC.
    if let (Some(previous), Some(mac)) = (previous, request.vtep_mac)
        && let Some(moved) = held
            .iter()
            .find(|h| h.key == previous && h.vtep_mac == Some(mac))
        && fits(config, previous)
        && Some(moved.key) != delete
    {
        return Ok(Plan {
            delete,
            claim: Claim::Reuse {
                key: previous,
                reservation: moved.reservation,
            },
        });
    }
    let others: Vec<SubnetKey> = held
        .iter()
        .map(|h| h.key)
        .filter(|k| Some(*k) != delete)
        .chain(unusable.iter().copied())
        .collect();
    // An IPv6-only lease's zero subnet is no IPv4 claim.
    let taken: Vec<Ipv4Net> = others
        .iter()
        .filter(|k| k.has_ipv4())
        .map(|k| k.subnet)
        .collect();
    let taken_v6: Vec<Ipv6Net> = others.iter().filter_map(|k| k.ipv6_subnet).collect();
    let free = |s: &Ipv4Net| !taken.iter().any(|t| t.contains(s) || s.contains(t));
    let free_v6 = |s: &Ipv6Net| !taken_v6.iter().any(|t| t.contains(s) || s.contains(t));
    if let Some(previous) = previous.filter(|p| {
        fits(config, *p)
            && (!p.has_ipv4() || free(&p.subnet))
            && p.ipv6_subnet.is_none_or(|s| free_v6(&s))
    }) {
        return Ok(Plan {
            delete,
            claim: Claim::Create {
                key: previous,
                previous: true,
            },
        });
    }
    let subnet = match config.enable_ipv4 {
        true => choose_free_subnet(config, &taken, rng).ok_or(AllocError::OutOfSubnets)?,
        false => NO_IPV4_SUBNET,
    };
    let ipv6_subnet = if config.enable_ipv6 {
        Some(choose_free_ipv6_subnet(config, &taken_v6, rng).ok_or(AllocError::OutOfSubnets)?)
    } else {
        None
    };
    Ok(Plan {
        delete,
        claim: Claim::Create {
            key: SubnetKey {
                subnet,
                ipv6_subnet,
            },
            previous: false,
        },
    })
}

/// The lease `request`'s node holds: the one with its `PublicIP`, or in an
/// IPv6-only network the one with its `PublicIPv6` (an IPv6-only lease
/// first, then a dual-stack lease left from an earlier config, which then
/// does not fit and is deleted first). Likewise in a network with IPv4, an
/// IPv6-only lease with the node's `PublicIPv6` is its lease of an earlier
/// IPv6-only config: it does not fit, and is deleted rather than left to
/// hold its IPv6 subnet.
fn own_lease<'a>(config: &NetConfig, held: &'a [Held], request: &Request) -> Option<&'a Held> {
    if config.enable_ipv4 {
        return held
            .iter()
            .find(|h| h.key.has_ipv4() && h.public_ip == request.public_ip)
            .or_else(|| {
                let ip = request.public_ipv6?;
                held.iter()
                    .find(|h| !h.key.has_ipv4() && h.public_ipv6 == Some(ip))
            });
    }
    let ip = request.public_ipv6?;
    let with_ip = || held.iter().filter(move |h| h.public_ipv6 == Some(ip));
    with_ip()
        .find(|h| !h.key.has_ipv4())
        .or_else(|| with_ip().next())
}

/// The first (at most) [`CHOICES`] subnet starts in `min..=max` (stepping by
/// `2^host_bits` from `min`) that overlap no `taken` range (inclusive
/// `(first, last)` addresses). A taken range larger than one subnet is
/// jumped over in one step, so a huge IPv6 range of taken or tiny subnets
/// costs no more than its leases.
fn free_starts(min: u128, max: u128, host_bits: u32, taken: &[(u128, u128)]) -> Vec<u128> {
    let Some(size) = 1u128.checked_shl(host_bits) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut start = min;
    while start <= max && out.len() < CHOICES {
        let last = start.saturating_add(size - 1);
        let blocking = taken
            .iter()
            .filter(|(first, end)| *first <= last && start <= *end)
            .map(|(_, end)| *end)
            .max();
        let next = match blocking {
            None => {
                out.push(start);
                start.checked_add(size)
            }
            // Skip to the first candidate after the blocking range.
            Some(end) => end
                .checked_add(1)
                .map(|after| after - start)
                .and_then(|gap| gap.div_ceil(size).max(1).checked_mul(size))
                .and_then(|step| start.checked_add(step)),
        };
        match next {
            Some(n) => start = n,
            None => break,
        }
    }
    out
}

fn pick<T: Copy, R: rand::Rng + ?Sized>(free: &[T], rng: &mut R) -> Option<T> {
    use rand::RngExt;
    (!free.is_empty()).then(|| free[rng.random_range(0..free.len())])
}

/// Chooses among free subnets as flannel does: from the first (at most) 100
/// subnets in SubnetMin..SubnetMax that overlap no taken subnet, one at random.
pub fn choose_free_subnet<R: rand::Rng + ?Sized>(
    config: &NetConfig,
    taken: &[Ipv4Net],
    rng: &mut R,
) -> Option<Ipv4Net> {
    let len = config.subnet_len.min(32);
    let ranges: Vec<(u128, u128)> = taken
        .iter()
        .map(|t| {
            (
                u128::from(u32::from(t.network())),
                u128::from(u32::from(t.broadcast())),
            )
        })
        .collect();
    let free = free_starts(
        u128::from(u32::from(config.subnet_min)),
        u128::from(u32::from(config.subnet_max)),
        32 - u32::from(len),
        &ranges,
    );
    let start = pick(&free, rng)?;
    Ipv4Net::new(Ipv4Addr::from(start as u32), len).ok()
}

/// The IPv6 choice, made the same way independently of the IPv4 one: from
/// the first (at most) 100 subnets in IPv6SubnetMin..IPv6SubnetMax that
/// overlap no taken IPv6 subnet, one at random.
pub fn choose_free_ipv6_subnet<R: rand::Rng + ?Sized>(
    config: &NetConfig,
    taken: &[Ipv6Net],
    rng: &mut R,
) -> Option<Ipv6Net> {
    let len = config.ipv6_subnet_len.min(128);
    let ranges: Vec<(u128, u128)> = taken
        .iter()
        .map(|t| (u128::from(t.network()), u128::from(t.broadcast())))
        .collect();
    let free = free_starts(
        u128::from(config.ipv6_subnet_min),
        u128::from(config.ipv6_subnet_max),
        128 - u32::from(len),
        &ranges,
    );
    let start = pick(&free, rng)?;
    Ipv6Net::new(Ipv6Addr::from(start), len).ok()
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

    fn net6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn key(s: &str) -> SubnetKey {
        SubnetKey::v4(net(s))
    }

    /// 10.244.`third`.0/24 held by 192.168.0.`node`.
    fn held(third: u8, node: u8, reservation: bool) -> Held {
        Held {
            key: SubnetKey::v4(Ipv4Net::new(Ipv4Addr::new(10, 244, third, 0), 24).unwrap()),
            public_ip: Ipv4Addr::new(192, 168, 0, node),
            public_ipv6: None,
            reservation,
            vtep_mac: Some(mac(node)),
        }
    }

    /// 10.244.`third`.0/24 and fd00:0:0:`v6`::/64 held by 192.168.0.`node`.
    fn held_dual(third: u8, v6: u16, node: u8) -> Held {
        let mut h = held(third, node, false);
        h.key.ipv6_subnet =
            Some(Ipv6Net::new(Ipv6Addr::new(0xfd00, 0, 0, v6, 0, 0, 0, 0), 64).unwrap());
        h.public_ipv6 = Some(ip6(node));
        h
    }

    /// Node `node`'s public IPv6, fd01::`node`.
    fn ip6(node: u8) -> Ipv6Addr {
        Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, u16::from(node))
    }

    /// An IPv6-only lease on fd00:0:0:`v6`::/64 held by fd01::`node`
    /// (PublicIP 0.0.0.0, VtepMAC of its BackendV6Data).
    fn held_v6(v6: u16, node: u8) -> Held {
        Held {
            key: SubnetKey::v6_only(
                Ipv6Net::new(Ipv6Addr::new(0xfd00, 0, 0, v6, 0, 0, 0, 0), 64).unwrap(),
            ),
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: Some(ip6(node)),
            reservation: false,
            vtep_mac: Some(mac(node)),
        }
    }

    /// Node `node`'s IPv6-only request, with a previous FLANNEL_IPV6_SUBNET.
    fn request_v6(node: u8, previous: Option<&str>) -> Request {
        Request {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: Some(ip6(node)),
            previous_subnet: None,
            previous_ipv6_subnet: previous.map(net6),
            vtep_mac: Some(mac(node)),
        }
    }

    fn request(node: u8, previous: Option<&str>) -> Request {
        Request {
            public_ip: Ipv4Addr::new(192, 168, 0, node),
            public_ipv6: None,
            previous_subnet: previous.map(net),
            previous_ipv6_subnet: None,
            vtep_mac: Some(mac(node)),
        }
    }

    fn request_dual(node: u8, previous: Option<(&str, &str)>) -> Request {
        Request {
            public_ipv6: Some(ip6(node)),
            previous_subnet: previous.map(|p| net(p.0)),
            previous_ipv6_subnet: previous.map(|p| net6(p.1)),
            ..request(node, None)
        }
    }

    /// Node `node`'s VtepMAC.
    fn mac(node: u8) -> MacAddr {
        MacAddr([0x0e, 0, 0, 0, 0, node])
    }

    const V4: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"vxlan"}}"#;

    fn plan_for(c: &NetConfig, held: &[Held], unusable: &[SubnetKey], r: &Request) -> Plan {
        plan(c, held, unusable, r, &mut rand::rng()).unwrap()
    }

    fn created(plan: &Plan) -> (SubnetKey, bool) {
        match plan.claim {
            Claim::Create { key, previous } => (key, previous),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_node_whose_address_changed_takes_its_previous_lease_over() {
        let c = config(V4);
        // Node 1's lease on 10.244.3.0/24 names its old address 192.168.0.9.
        let mut moved = held(3, 9, false);
        moved.vtep_mac = Some(mac(1));
        let leases = [moved, held(4, 2, false)];
        assert_eq!(
            plan_for(&c, &leases, &[], &request(1, Some("10.244.3.0/24"))),
            Plan {
                delete: None,
                claim: Claim::Reuse {
                    key: key("10.244.3.0/24"),
                    reservation: false
                }
            }
        );
        // Another node's MAC on that subnet: taken, a new subnet is chosen.
        let leases = [held(3, 9, false)];
        let plan = plan_for(&c, &leases, &[], &request(1, Some("10.244.3.0/24")));
        assert!(!created(&plan).1, "{plan:?}");
    }

    #[test]
    fn a_dual_stack_node_whose_address_changed_takes_its_pair_over() {
        let c = config(DUAL);
        let mut moved = held_dual(3, 3, 9);
        moved.vtep_mac = Some(mac(1));
        let pair = ("10.244.3.0/24", "fd00:0:0:3::/64");
        assert_eq!(
            plan_for(&c, &[moved], &[], &request_dual(1, Some(pair))).claim,
            Claim::Reuse {
                key: moved.key,
                reservation: false
            }
        );
        // The subnet.env's v6 subnet differs from the lease's: not this
        // node's lease; both subnets stay taken.
        let other = ("10.244.3.0/24", "fd00:0:0:4::/64");
        let plan = plan_for(&c, &[moved], &[], &request_dual(1, Some(other)));
        let (got, previous) = created(&plan);
        assert!(!previous);
        assert_ne!(got.subnet, moved.key.subnet);
        assert_ne!(got.ipv6_subnet, moved.key.ipv6_subnet);
    }

    #[test]
    fn the_lease_of_this_public_ip_is_reused_and_a_reservation_stays_one() {
        let c = config(V4);
        let leases = [held(3, 1, false), held(4, 2, false)];
        assert_eq!(
            plan_for(&c, &leases, &[], &request(1, Some("10.244.9.0/24"))),
            Plan {
                delete: None,
                claim: Claim::Reuse {
                    key: key("10.244.3.0/24"),
                    reservation: false
                }
            }
        );
        let plan = plan_for(&c, &[held(3, 1, true)], &[], &request(1, None));
        assert_eq!(
            plan.claim,
            Claim::Reuse {
                key: key("10.244.3.0/24"),
                reservation: true
            }
        );
    }

    #[test]
    fn an_own_dual_stack_lease_that_fits_is_reused_whole() {
        let c = config(DUAL);
        let mine = held_dual(3, 7, 1);
        let plan = plan_for(&c, &[mine, held_dual(4, 8, 2)], &[], &request(1, None));
        assert_eq!(
            plan,
            Plan {
                delete: None,
                claim: Claim::Reuse {
                    key: mine.key,
                    reservation: false
                }
            }
        );
        assert_eq!(
            plan.claim.key().to_string(),
            "10.244.3.0-24&fd00:0:0:7::-64"
        );
    }

    #[test]
    fn an_own_lease_outside_the_config_or_dual_stack_is_deleted_first() {
        let c = config(r#"{"Network":"10.244.0.0/16","SubnetLen":25,"Backend":{"Type":"vxlan"}}"#);
        let plan = plan_for(&c, &[held(3, 1, false)], &[], &request(1, None));
        assert_eq!(plan.delete, Some(held(3, 1, false).key));
        let (got, previous) = created(&plan);
        assert!(!previous);
        assert!(c.fits(got.subnet), "{got}");
        assert_eq!(got.ipv6_subnet, None);
        // IPv6 off: an own lease with a v6 subnet does not fit.
        let c = config(V4);
        let dual = held_dual(3, 3, 1);
        let plan = plan_for(&c, &[dual], &[], &request(1, None));
        assert_eq!(
            plan.delete,
            Some(dual.key),
            "the whole key, IPv6 part included"
        );
        assert_eq!(created(&plan).0.ipv6_subnet, None);
    }

    #[test]
    fn with_ipv6_on_an_own_lease_without_a_fitting_v6_subnet_is_deleted_first() {
        let c = config(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:10::","IPv6SubnetMax":"fd00:0:0:20::","Backend":{"Type":"vxlan"}}"#,
        );
        let v6 = |s: &str| {
            let mut h = held(3, 1, false);
            h.key.ipv6_subnet = Some(net6(s));
            h
        };
        for (mine, why) in [
            (held(3, 1, false), "no v6 subnet"),
            (v6("fd00:0:0:f::/64"), "below IPv6SubnetMin"),
            (v6("fd00:0:0:21::/64"), "above IPv6SubnetMax"),
            (v6("fd00:0:0:12::/80"), "not IPv6SubnetLen"),
            (v6("fd01:0:0:12::/64"), "outside IPv6Network"),
        ] {
            let plan = plan_for(&c, &[mine], &[], &request(1, None));
            assert_eq!(plan.delete, Some(mine.key), "{why}");
            let (got, _) = created(&plan);
            assert!(fits(&c, got), "{why}: {got}");
        }
        // At the bounds it fits.
        for s in ["fd00:0:0:10::/64", "fd00:0:0:20::/64"] {
            let mine = v6(s);
            assert_eq!(
                plan_for(&c, &[mine], &[], &request(1, None)).claim,
                Claim::Reuse {
                    key: mine.key,
                    reservation: false
                },
                "{s}"
            );
        }
    }

    #[test]
    fn the_previous_subnet_only_when_free_and_fitting() {
        let c = config(V4);
        let leases = [held(3, 3, false)];
        let unusable = [key("10.244.5.0/24")];
        let create =
            |previous: &str| plan_for(&c, &leases, &unusable, &request(1, Some(previous))).claim;
        assert_eq!(
            create("10.244.9.0/24"),
            Claim::Create {
                key: key("10.244.9.0/24"),
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
                Claim::Create { key: got, previous } => {
                    assert!(!previous, "{taken_or_unfit}");
                    assert!(
                        ![net("10.244.3.0/24"), net("10.244.5.0/24")].contains(&got.subnet),
                        "{got}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        // IPv6 off: a previous pair (the subnet.env of a dual-stack run) does not fit.
        let plan = plan_for(
            &c,
            &[],
            &[],
            &request_dual(1, Some(("10.244.9.0/24", "fd00:0:0:9::/64"))),
        );
        assert!(!created(&plan).1);
    }

    #[test]
    fn the_previous_pair_is_reused_only_whole_free_and_fitting() {
        let c = config(DUAL);
        let leases = [held_dual(3, 3, 3)];
        let unusable = [SubnetKey {
            subnet: net("10.244.5.0/24"),
            ipv6_subnet: Some(net6("fd00:0:0:5::/64")),
        }];
        let create = |pair: (&str, &str)| {
            created(&plan_for(
                &c,
                &leases,
                &unusable,
                &request_dual(1, Some(pair)),
            ))
        };
        assert_eq!(
            create(("10.244.9.0/24", "fd00:0:0:9::/64")),
            (
                SubnetKey {
                    subnet: net("10.244.9.0/24"),
                    ipv6_subnet: Some(net6("fd00:0:0:9::/64"))
                },
                true
            )
        );
        for (pair, why) in [
            (("10.244.9.0/24", "fd00:0:0:3::/64"), "v6 held by a lease"),
            (
                ("10.244.9.0/24", "fd00:0:0:5::/80"),
                "v6 inside an unusable record's",
            ),
            (("10.244.3.0/24", "fd00:0:0:9::/64"), "v4 held"),
            (
                ("10.244.9.0/24", "fd00:0:0:0::/64"),
                "v6 below IPv6SubnetMin",
            ),
            (("10.244.9.0/24", "fd01::/64"), "v6 outside IPv6Network"),
        ] {
            let (got, previous) = create(pair);
            assert!(!previous, "{why}");
            assert!(fits(&c, got), "{why}: {got}");
        }
        // As subnet.env writes them (gateway addresses): the subnets.
        assert_eq!(
            create(("10.244.9.1/24", "fd00:0:0:9::1/64")).0.to_string(),
            "10.244.9.0-24&fd00:0:0:9::-64"
        );
        // With IPv6 on, a previous v4 subnet alone (a v4-only subnet.env) is not reused.
        let plan = plan_for(&c, &[], &[], &request(1, Some("10.244.9.0/24")));
        let (got, previous) = created(&plan);
        assert!(!previous);
        assert!(got.ipv6_subnet.is_some());
    }

    #[test]
    fn a_random_one_of_the_first_hundred_free_then_out_of_subnets() {
        let c = config(V4);
        let leases: Vec<Held> = (1..=50).map(|i| held(i, i + 100, false)).collect();
        for _ in 0..200 {
            let (got, _) = created(&plan_for(&c, &leases, &[], &request(1, None)));
            let third = got.subnet.network().octets()[2];
            assert!((51..=150).contains(&third), "{got}");
        }
        let small = config(r#"{"Network":"10.0.0.0/28","Backend":{"Type":"vxlan"}}"#);
        let full: Vec<Held> = small
            .subnets()
            .enumerate()
            .map(|(i, s)| Held {
                key: SubnetKey::v4(s),
                public_ip: Ipv4Addr::new(192, 168, 1, i as u8),
                public_ipv6: None,
                reservation: false,
                vtep_mac: None,
            })
            .collect();
        let err = plan(&small, &full, &[], &request(1, None), &mut rand::rng()).unwrap_err();
        assert_eq!(err.to_string(), "out of subnets");
    }

    #[test]
    fn a_random_v6_subnet_among_the_first_hundred_free_never_overlapping() {
        let c = config(DUAL);
        // v6 subnets 1..=50 held (10.244.x with x far away), one /60 (16
        // subnets from 0x40) and one /80 inside 0x60 unusable.
        let mut leases: Vec<Held> = (1..=50u8)
            .map(|i| held_dual(i + 100, u16::from(i), i))
            .collect();
        leases.push(held(200, 200, false)); // v4-only: takes no v6 subnet
        let unusable = [
            SubnetKey {
                subnet: net("10.244.201.0/24"),
                ipv6_subnet: Some(net6("fd00:0:0:40::/60")),
            },
            SubnetKey {
                subnet: net("10.244.202.0/24"),
                ipv6_subnet: Some(net6("fd00:0:0:60::/80")),
            },
        ];
        let taken_v6: Vec<Ipv6Net> = leases
            .iter()
            .chain([].iter())
            .filter_map(|h| h.key.ipv6_subnet)
            .chain(unusable.iter().filter_map(|k| k.ipv6_subnet))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let (got, previous) = created(&plan_for(&c, &leases, &unusable, &request(250, None)));
            assert!(!previous);
            let v6 = got.ipv6_subnet.expect("IPv6 on: a v6 subnet");
            assert!(fits(&c, got), "{got}");
            assert!(
                !taken_v6.iter().any(|t| t.contains(&v6) || v6.contains(t)),
                "{v6} overlaps a taken subnet"
            );
            // The first 100 free: 51..=0x3f (13), 0x50..=0x5f (16), 0x61.. (71 more).
            let n = v6.network().segments()[3];
            assert!(
                (51..=0xa7).contains(&n),
                "{v6} is not among the first 100 free"
            );
            seen.insert(n);
        }
        assert!(
            seen.len() > 50,
            "the choice is random: {} distinct",
            seen.len()
        );
    }

    #[test]
    fn out_of_v6_subnets_is_out_of_subnets() {
        let c = config(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/124","Backend":{"Type":"vxlan"}}"#,
        );
        assert_eq!(c.ipv6_subnet_len, 126);
        // Three v6 subnets (the first is skipped), all held by v4-free leases.
        let leases: Vec<Held> = (1..=3u8)
            .map(|i| {
                let mut h = held(i, i, false);
                h.key.ipv6_subnet = Some(
                    Ipv6Net::new(
                        Ipv6Addr::from((0xfd00u128 << 112) | (u128::from(i) * 4)),
                        126,
                    )
                    .unwrap(),
                );
                h
            })
            .collect();
        let err = plan(&c, &leases, &[], &request(9, None), &mut rand::rng()).unwrap_err();
        assert_eq!(err, AllocError::OutOfSubnets);
        assert_eq!(err.to_string(), "out of subnets");
        // One unusable record covering the whole v6 network does it too.
        let unusable = [SubnetKey {
            subnet: net("10.244.99.0/24"),
            ipv6_subnet: Some(net6("fd00::/64")),
        }];
        let err = plan(&c, &[], &unusable, &request(9, None), &mut rand::rng()).unwrap_err();
        assert_eq!(err, AllocError::OutOfSubnets);
    }

    #[test]
    fn a_huge_taken_v6_range_is_skipped_not_walked() {
        // 2^64 candidate /64s after one /0-sized unusable key: must not walk them.
        let c = config(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/8","IPv6SubnetLen":72,"Backend":{"Type":"vxlan"}}"#,
        );
        let unusable = [SubnetKey {
            subnet: net("10.244.99.0/24"),
            ipv6_subnet: Some(net6("fd00::/9")),
        }];
        let (got, _) = created(&plan_for(&c, &[], &unusable, &request(1, None)));
        let v6 = got.ipv6_subnet.unwrap();
        assert!(net6("fd80::/9").contains(&v6), "{v6}");
        let all = [SubnetKey {
            subnet: net("10.244.99.0/24"),
            ipv6_subnet: Some(net6("::/0")),
        }];
        assert_eq!(
            plan(&c, &[], &all, &request(1, None), &mut rand::rng()).unwrap_err(),
            AllocError::OutOfSubnets
        );
    }

    #[test]
    fn unplannable_configs_are_clear_errors() {
        // IPv6-only parsed but not checked (no IPv6SubnetLen): refused.
        let no_v4 = NetConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let err = plan(&no_v4, &[], &[], &request_v6(1, None), &mut rand::rng()).unwrap_err();
        assert_eq!(err, AllocError::NoIpv6Network);
        // No family at all.
        let mut neither = config(V4);
        neither.enable_ipv4 = false;
        let err = plan(&neither, &[], &[], &request(1, None), &mut rand::rng()).unwrap_err();
        assert_eq!(err, AllocError::NoAddressFamily);
        assert!(err.to_string().contains("neither IPv4 nor IPv6"), "{err}");
        // Parsed but not checked (no defaults filled in): refused, not walked.
        let unchecked = NetConfig::parse(V4).unwrap();
        let err = plan(&unchecked, &[], &[], &request(1, None), &mut rand::rng()).unwrap_err();
        assert_eq!(err, AllocError::NoIpv4Network);
        assert!(err.to_string().contains("\"EnableIPv4\": false"), "{err}");
        let mut v6_unchecked = config(V4);
        v6_unchecked.enable_ipv6 = true;
        let err = plan(&v6_unchecked, &[], &[], &request(1, None), &mut rand::rng()).unwrap_err();
        assert_eq!(err, AllocError::NoIpv6Network);
        assert!(err.to_string().contains("IPv6Network"), "{err}");
    }

    const V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"vxlan"}}"#;

    #[test]
    fn ipv6_only_creates_a_zero_ipv4_subnet_and_a_free_v6_one() {
        let c = config(V6_ONLY);
        let (got, previous) = created(&plan_for(&c, &[], &[], &request_v6(1, None)));
        assert!(!previous);
        assert_eq!(got.subnet, NO_IPV4_SUBNET);
        assert!(!got.has_ipv4());
        let v6 = got.ipv6_subnet.expect("an IPv6 subnet");
        assert!(fits(&c, got), "{got}");
        assert_eq!(v6.prefix_len(), 64);
        assert!(got.to_string().starts_with("0.0.0.0-0&fd00:0:0:"), "{got}");
        // Other IPv6-only leases (all on 0.0.0.0/0) and a dual-stack record
        // take their IPv6 subnets only: a random one of the first 100 free.
        let mut leases: Vec<Held> = (1..=50u16).map(|i| held_v6(i, 100)).collect();
        leases.push(held_dual(9, 51, 101));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let (got, _) = created(&plan_for(&c, &leases, &[], &request_v6(1, None)));
            assert_eq!(got.subnet, NO_IPV4_SUBNET);
            let n = got.ipv6_subnet.unwrap().network().segments()[3];
            assert!(
                (52..=151).contains(&n),
                "{got} is not among the first 100 free"
            );
            seen.insert(n);
        }
        assert!(
            seen.len() > 50,
            "the choice is random: {} distinct",
            seen.len()
        );
    }

    #[test]
    fn ipv6_only_reuses_the_lease_of_this_public_ipv6_never_of_public_ip_zero() {
        let c = config(V6_ONLY);
        // Every IPv6-only lease has PublicIP 0.0.0.0: node 2's is not node 1's.
        let others = [held_v6(7, 2), held_v6(8, 3)];
        let (got, _) = created(&plan_for(&c, &others, &[], &request_v6(1, None)));
        assert!(
            !others.iter().any(|h| h.key.ipv6_subnet == got.ipv6_subnet),
            "{got}"
        );
        // Its own lease, by PublicIPv6: reused, a reservation stays one.
        let mut mine = held_v6(5, 1);
        mine.reservation = true;
        let leases = [others[0], mine, others[1]];
        assert_eq!(
            plan_for(&c, &leases, &[], &request_v6(1, Some("fd00:0:0:9::/64"))),
            Plan {
                delete: None,
                claim: Claim::Reuse {
                    key: mine.key,
                    reservation: true
                }
            }
        );
        // In dual stack an IPv6-only lease with the node's PublicIPv6 is its
        // lease of an earlier IPv6-only config: deleted, not left holding
        // its IPv6 subnet, and a dual-stack lease made.
        let dual = config(DUAL);
        let earlier = held_v6(5, 1);
        let plan = plan_for(&dual, &[earlier], &[], &request_dual(1, None));
        assert_eq!(plan.delete, Some(earlier.key), "{plan:?}");
        assert!(created(&plan).0.has_ipv4(), "{plan:?}");
        // Another node's IPv6-only lease is left alone.
        let plan = plan_for(&dual, &[held_v6(5, 2)], &[], &request_dual(1, None));
        assert_eq!(plan.delete, None, "{plan:?}");
    }

    #[test]
    fn ipv6_only_deletes_an_own_lease_that_does_not_fit_first() {
        let c = config(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:10::","Backend":{"Type":"vxlan"}}"#,
        );
        // Below IPv6SubnetMin.
        let low = held_v6(3, 1);
        let plan = plan_for(&c, &[low], &[], &request_v6(1, None));
        assert_eq!(plan.delete, Some(low.key));
        assert!(fits(&c, created(&plan).0));
        // The dual-stack lease of an earlier config, same PublicIPv6: deleted
        // (the whole key), its IPv6 subnet is free again, an IPv6-only lease made.
        let earlier = held_dual(3, 0x12, 1);
        let plan = plan_for(
            &c,
            &[earlier],
            &[],
            &request_v6(1, Some("fd00:0:0:12::1/64")),
        );
        assert_eq!(plan.delete, Some(earlier.key));
        assert_eq!(
            created(&plan),
            (SubnetKey::v6_only(net6("fd00:0:0:12::/64")), true)
        );
        // With an own IPv6-only lease too, that one is the node's.
        let mine = held_v6(0x20, 1);
        assert_eq!(
            plan_for(&c, &[earlier, mine], &[], &request_v6(1, None)).claim,
            Claim::Reuse {
                key: mine.key,
                reservation: false
            }
        );
    }

    #[test]
    fn ipv6_only_reuses_the_previous_ipv6_subnet_when_free_and_fitting() {
        let c = config(V6_ONLY);
        let leases = [held_v6(3, 3), held_dual(4, 4, 4)];
        let unusable = [SubnetKey::v6_only(net6("fd00:0:0:5::/64"))];
        let create = |previous: &str| {
            created(&plan_for(
                &c,
                &leases,
                &unusable,
                &request_v6(1, Some(previous)),
            ))
        };
        // As subnet.env writes it (the gateway address): the subnet.
        assert_eq!(
            create("fd00:0:0:9::1/64"),
            (SubnetKey::v6_only(net6("fd00:0:0:9::/64")), true)
        );
        for (taken_or_unfit, why) in [
            ("fd00:0:0:3::/64", "an IPv6-only lease's"),
            ("fd00:0:0:4::/64", "a dual-stack lease's"),
            ("fd00:0:0:5::/64", "an unusable record's"),
            ("fd00::/64", "below IPv6SubnetMin"),
            ("fd00:0:0:9::/80", "not IPv6SubnetLen"),
            ("fd01::/64", "outside IPv6Network"),
        ] {
            let (got, previous) = create(taken_or_unfit);
            assert!(!previous, "{why}");
            assert!(fits(&c, got), "{why}: {got}");
            assert!(
                ![3u16, 4, 5].contains(&got.ipv6_subnet.unwrap().network().segments()[3]),
                "{why}: {got}"
            );
        }
        // An IPv4 FLANNEL_SUBNET left from an earlier run is ignored.
        let mut r = request_v6(1, Some("fd00:0:0:9::/64"));
        r.previous_subnet = Some(net("10.244.9.0/24"));
        assert_eq!(
            created(&plan_for(&c, &[], &[], &r)),
            (SubnetKey::v6_only(net6("fd00:0:0:9::/64")), true)
        );
    }

    #[test]
    fn an_ipv6_only_node_whose_address_changed_takes_its_lease_over() {
        let c = config(V6_ONLY);
        // Node 1's lease on fd00:0:0:3::/64 names its old address fd01::9.
        let mut moved = held_v6(3, 9);
        moved.vtep_mac = Some(mac(1));
        assert_eq!(
            plan_for(&c, &[moved], &[], &request_v6(1, Some("fd00:0:0:3::/64"))).claim,
            Claim::Reuse {
                key: moved.key,
                reservation: false
            }
        );
        // Another node's MAC on it: taken.
        let theirs = held_v6(3, 9);
        let (got, previous) = created(&plan_for(
            &c,
            &[theirs],
            &[],
            &request_v6(1, Some("fd00:0:0:3::/64")),
        ));
        assert!(!previous);
        assert_ne!(got, theirs.key);
    }

    #[test]
    fn ipv6_only_runs_out_of_v6_subnets_and_v4_ignores_ipv6_only_leases() {
        let c = config(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/124","Backend":{"Type":"vxlan"}}"#,
        );
        let full: Vec<Held> = (1..=3u8)
            .map(|i| Held {
                key: SubnetKey::v6_only(
                    Ipv6Net::new(
                        Ipv6Addr::from((0xfd00u128 << 112) | (u128::from(i) * 4)),
                        126,
                    )
                    .unwrap(),
                ),
                ..held_v6(0, i + 10)
            })
            .collect();
        assert_eq!(
            plan(&c, &full, &[], &request_v6(1, None), &mut rand::rng()).unwrap_err(),
            AllocError::OutOfSubnets
        );
        // IPv4 planning: the zero subnet of IPv6-only leases takes no IPv4 subnet.
        let v4 = config(V4);
        let (got, _) = created(&plan_for(&v4, &[held_v6(1, 1)], &[], &request(1, None)));
        assert!(v4.fits(got.subnet), "{got}");
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

    #[test]
    fn the_walk_matches_the_plain_enumeration() {
        // The skipping walk finds exactly the subnets a plain filter finds.
        let c = config(r#"{"Network":"10.0.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan"}}"#);
        let taken = [
            net("10.0.0.64/26"),
            net("10.0.1.0/24"),
            net("10.0.2.17/32"),
            net("10.0.3.0/25"),
            net("10.0.0.0/20"),
        ];
        for taken in [&taken[..4], &taken[..]] {
            let plain: Vec<Ipv4Net> = c
                .subnets()
                .filter(|s| !taken.iter().any(|t| t.contains(s) || s.contains(t)))
                .take(CHOICES)
                .collect();
            let ranges: Vec<(u128, u128)> = taken
                .iter()
                .map(|t| {
                    (
                        u128::from(u32::from(t.network())),
                        u128::from(u32::from(t.broadcast())),
                    )
                })
                .collect();
            let walked: Vec<Ipv4Net> = free_starts(
                u128::from(u32::from(c.subnet_min)),
                u128::from(u32::from(c.subnet_max)),
                32 - u32::from(c.subnet_len),
                &ranges,
            )
            .into_iter()
            .map(|s| Ipv4Net::new(Ipv4Addr::from(s as u32), c.subnet_len).unwrap())
            .collect();
            assert_eq!(walked, plain);
        }
    }
}
