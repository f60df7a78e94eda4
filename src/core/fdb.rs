//! The forwarding database: which node's public IP hosts each remote VTEP
//! MAC (for sending), and which (public IP, VTEP MAC) pairs may send to us
//! (for the source check). Filled only from lease events; weft never learns
//! from traffic.
//!
//! Leases can conflict: a node that changed its public IP keeps its VtepMAC
//! while its old lease lingers until it expires, and two Node objects can
//! carry the same public IP. For sending, the entry inserted last wins (the
//! caller inserts leases oldest first, so the newest lease wins, as flannel's
//! event-ordered FDB does); for receiving, every pair a lease announces is
//! accepted.

use super::mac::MacAddr;
use foldhash::{HashMap, HashSet};
use std::net::IpAddr;

/// Why a destination MAC has no FDB entry. weft never floods either kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdbMiss {
    /// A unicast MAC no lease announces.
    Unknown,
    /// A broadcast or multicast MAC.
    Group,
}

/// What the source check found for a datagram's sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenderCheck {
    /// Some lease announces this (public IP, VtepMAC) pair.
    Known,
    /// No lease has this public IP.
    UnknownIp,
    /// Leases have this public IP, but none with this MAC.
    WrongMac,
}

/// VtepMAC → public IP for sending; announced (public IP, VtepMAC) pairs for receiving.
#[derive(Clone, Debug, Default)]
pub struct Fdb {
    by_mac: HashMap<MacAddr, IpAddr>,
    pairs: HashSet<(IpAddr, MacAddr)>,
    ips: HashMap<IpAddr, usize>,
    macs: HashMap<MacAddr, usize>,
}

impl Fdb {
    /// An empty database.
    pub fn new() -> Fdb {
        Fdb::default()
    }

    /// Records that a lease announces `mac` at `ip`; for sending, replaces any
    /// earlier entry for `mac`.
    pub fn insert(&mut self, mac: MacAddr, ip: impl Into<IpAddr>) {
        let ip = ip.into();
        self.by_mac.insert(mac, ip);
        if self.pairs.insert((ip, mac)) {
            *self.ips.entry(ip).or_default() += 1;
            *self.macs.entry(mac).or_default() += 1;
        }
    }

    /// The public IP to send frames for `mac` to.
    pub fn lookup(&self, mac: MacAddr) -> Result<IpAddr, FdbMiss> {
        if mac.is_multicast() {
            return Err(FdbMiss::Group);
        }
        self.by_mac.get(&mac).copied().ok_or(FdbMiss::Unknown)
    }

    /// Whether a datagram from `ip` carrying inner source `mac` comes from a known VTEP.
    pub fn check_sender(&self, ip: IpAddr, mac: MacAddr) -> SenderCheck {
        if self.pairs.contains(&(ip, mac)) {
            SenderCheck::Known
        } else if self.ips.contains_key(&ip) {
            SenderCheck::WrongMac
        } else {
            SenderCheck::UnknownIp
        }
    }

    /// Whether some lease announces `mac`.
    pub fn knows_mac(&self, mac: MacAddr) -> bool {
        self.macs.contains_key(&mac)
    }

    /// Distinct VTEP MACs (send entries).
    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    /// Whether no lease announces a MAC.
    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    /// Every send entry, (VTEP MAC, public IP).
    pub fn iter(&self) -> impl Iterator<Item = (MacAddr, IpAddr)> + '_ {
        self.by_mac.iter().map(|(m, ip)| (*m, *ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x0e, 0, 0, 0, 0, last])
    }

    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 9));

    #[test]
    fn lookup_and_sender_check() {
        let mut fdb = Fdb::new();
        fdb.insert(mac(1), A);
        assert_eq!(fdb.lookup(mac(1)), Ok(A));
        assert_eq!(fdb.lookup(mac(2)), Err(FdbMiss::Unknown));
        assert_eq!(fdb.lookup(MacAddr::BROADCAST), Err(FdbMiss::Group));
        assert_eq!(
            fdb.lookup(MacAddr([0x01, 0, 0x5e, 0, 0, 1])),
            Err(FdbMiss::Group)
        );
        assert_eq!(fdb.check_sender(A, mac(1)), SenderCheck::Known);
        assert_eq!(fdb.check_sender(A, mac(2)), SenderCheck::WrongMac);
        assert_eq!(fdb.check_sender(B, mac(1)), SenderCheck::UnknownIp);
    }

    #[test]
    fn a_node_that_moved_keeps_its_mac_newest_lease_wins_for_sending() {
        let mut fdb = Fdb::new();
        fdb.insert(mac(1), A); // the old lease, still in the store
        fdb.insert(mac(1), B); // the node's new lease, inserted after
        assert_eq!(fdb.lookup(mac(1)), Ok(B));
        assert_eq!(fdb.check_sender(B, mac(1)), SenderCheck::Known);
        assert_eq!(fdb.check_sender(A, mac(1)), SenderCheck::Known);
        assert_eq!(fdb.len(), 1);
    }

    #[test]
    fn two_leases_on_one_ip_are_both_accepted() {
        let mut fdb = Fdb::new();
        fdb.insert(mac(1), A);
        fdb.insert(mac(2), A);
        assert_eq!(fdb.check_sender(A, mac(1)), SenderCheck::Known);
        assert_eq!(fdb.check_sender(A, mac(2)), SenderCheck::Known);
        assert_eq!(fdb.lookup(mac(1)), Ok(A));
        assert_eq!(fdb.lookup(mac(2)), Ok(A));
    }

    #[test]
    fn ipv6_vteps_and_ipv4_vteps_are_told_apart() {
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1));
        let mut fdb = Fdb::new();
        fdb.insert(mac(1), A);
        fdb.insert(mac(2), v6);
        assert_eq!(fdb.lookup(mac(2)), Ok(v6));
        assert_eq!(fdb.check_sender(v6, mac(2)), SenderCheck::Known);
        assert_eq!(fdb.check_sender(v6, mac(1)), SenderCheck::WrongMac);
        // The v4-mapped form of A is another address: no lease announces it.
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 168, 0, 1).to_ipv6_mapped());
        assert_eq!(fdb.check_sender(mapped, mac(1)), SenderCheck::UnknownIp);
    }
}
