//! The forwarding database: which node's public IP hosts each remote VTEP
//! MAC, and, the other way round, which VTEP speaks from each public IP.
//! Filled only from lease events; weft never learns from traffic.

use super::mac::MacAddr;
use foldhash::HashMap;
use std::net::Ipv4Addr;

/// Why a destination MAC has no FDB entry. weft never floods either kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdbMiss {
    /// A unicast MAC no lease announces.
    Unknown,
    /// A broadcast or multicast MAC.
    Group,
}

/// VtepMAC → public IP, and public IP → VtepMAC.
#[derive(Clone, Debug, Default)]
pub struct Fdb {
    by_mac: HashMap<MacAddr, Ipv4Addr>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
}

impl Fdb {
    pub fn new() -> Fdb {
        Fdb::default()
    }

    /// Adds or replaces the entry for `mac`, and makes it the VTEP of `ip`.
    pub fn insert(&mut self, mac: MacAddr, ip: Ipv4Addr) {
        if let Some(old_ip) = self.by_mac.insert(mac, ip)
            && old_ip != ip
            && self.by_ip.get(&old_ip) == Some(&mac)
        {
            self.by_ip.remove(&old_ip);
        }
        if let Some(old_mac) = self.by_ip.insert(ip, mac)
            && old_mac != mac
        {
            self.by_mac.remove(&old_mac);
        }
    }

    /// Removes `mac` (and its reverse entry) if present.
    pub fn remove(&mut self, mac: MacAddr) -> Option<Ipv4Addr> {
        let ip = self.by_mac.remove(&mac)?;
        if self.by_ip.get(&ip) == Some(&mac) {
            self.by_ip.remove(&ip);
        }
        Some(ip)
    }

    /// The public IP to send frames for `mac` to.
    pub fn lookup(&self, mac: MacAddr) -> Result<Ipv4Addr, FdbMiss> {
        if mac.is_multicast() {
            return Err(FdbMiss::Group);
        }
        self.by_mac.get(&mac).copied().ok_or(FdbMiss::Unknown)
    }

    /// The VTEP MAC of the node whose public IP is `ip`.
    pub fn vtep_at(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.by_ip.get(&ip).copied()
    }

    /// Whether some lease announces `mac`.
    pub fn knows_mac(&self, mac: MacAddr) -> bool {
        self.by_mac.contains_key(&mac)
    }

    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (MacAddr, Ipv4Addr)> + '_ {
        self.by_mac.iter().map(|(m, ip)| (*m, *ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x0e, 0, 0, 0, 0, last])
    }

    #[test]
    fn lookup_both_ways() {
        let mut fdb = Fdb::new();
        fdb.insert(mac(1), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(fdb.lookup(mac(1)), Ok(Ipv4Addr::new(192, 168, 0, 1)));
        assert_eq!(fdb.vtep_at(Ipv4Addr::new(192, 168, 0, 1)), Some(mac(1)));
        assert_eq!(fdb.lookup(mac(2)), Err(FdbMiss::Unknown));
        assert_eq!(fdb.lookup(MacAddr::BROADCAST), Err(FdbMiss::Group));
        assert_eq!(
            fdb.lookup(MacAddr([0x01, 0, 0x5e, 0, 0, 1])),
            Err(FdbMiss::Group)
        );
    }

    #[test]
    fn new_mac_for_a_node_replaces_the_old_one() {
        let mut fdb = Fdb::new();
        let ip = Ipv4Addr::new(192, 168, 0, 1);
        fdb.insert(mac(1), ip);
        fdb.insert(mac(2), ip);
        assert_eq!(fdb.lookup(mac(1)), Err(FdbMiss::Unknown));
        assert_eq!(fdb.vtep_at(ip), Some(mac(2)));
        assert_eq!(fdb.len(), 1);
    }

    #[test]
    fn node_moving_to_a_new_ip_forgets_the_old_ip() {
        let mut fdb = Fdb::new();
        fdb.insert(mac(1), Ipv4Addr::new(192, 168, 0, 1));
        fdb.insert(mac(1), Ipv4Addr::new(192, 168, 0, 9));
        assert_eq!(fdb.vtep_at(Ipv4Addr::new(192, 168, 0, 1)), None);
        assert_eq!(fdb.vtep_at(Ipv4Addr::new(192, 168, 0, 9)), Some(mac(1)));
        assert_eq!(fdb.remove(mac(1)), Some(Ipv4Addr::new(192, 168, 0, 9)));
        assert!(fdb.is_empty());
        assert_eq!(fdb.vtep_at(Ipv4Addr::new(192, 168, 0, 9)), None);
    }
}
