//! The ARP table (remote subnet gateway `S.0` → that node's VtepMAC) and the
//! responder that answers the kernel's ARP requests on the TAP from it.
//! ARP never crosses the wire: every answer comes from a lease.

use super::mac::MacAddr;
use super::wire::ethernet::{self, ethertype};
use etherparse::{ArpEthIpv4Packet, ArpHardwareId, ArpOperation, ArpPacketSlice, EtherType};
use foldhash::HashMap;
use std::net::Ipv4Addr;

/// Length of the ARP reply frame the responder writes.
pub const REPLY_LEN: usize = ethernet::HEADER_LEN + ArpEthIpv4Packet::LEN;

/// Why an ARP frame from the TAP got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpRefusal {
    /// Too short, or not IPv4 over Ethernet.
    Malformed,
    /// A reply or another operation: only requests are answered.
    NotRequest,
    /// The target address is no remote subnet's gateway.
    UnknownTarget,
}

/// S.0 → VtepMAC for every remote lease.
#[derive(Clone, Debug, Default)]
pub struct ArpTable {
    entries: HashMap<Ipv4Addr, MacAddr>,
}

impl ArpTable {
    /// An empty table.
    pub fn new() -> ArpTable {
        ArpTable::default()
    }

    /// Answers ARP for `gateway` with `mac`; returns the MAC it answered with before.
    pub fn insert(&mut self, gateway: Ipv4Addr, mac: MacAddr) -> Option<MacAddr> {
        self.entries.insert(gateway, mac)
    }

    /// Stops answering for `gateway`; returns the MAC it answered with.
    pub fn remove(&mut self, gateway: Ipv4Addr) -> Option<MacAddr> {
        self.entries.remove(&gateway)
    }

    /// The MAC to answer with for `gateway`.
    pub fn lookup(&self, gateway: Ipv4Addr) -> Option<MacAddr> {
        self.entries.get(&gateway).copied()
    }

    /// Gateways answered for.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no gateway is answered for.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every (gateway, MAC) answered for.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, MacAddr)> + '_ {
        self.entries.iter().map(|(ip, mac)| (*ip, *mac))
    }

    /// Answers the Ethernet `frame` (an ARP request from the kernel) by writing
    /// the reply frame into `out`, which must hold [`REPLY_LEN`] bytes.
    /// Returns the reply's length.
    pub fn respond(&self, frame: &[u8], out: &mut [u8]) -> Result<usize, ArpRefusal> {
        let eth = ethernet::Frame::new_checked(frame).map_err(|_| ArpRefusal::Malformed)?;
        let arp = ArpPacketSlice::from_slice(eth.payload()).map_err(|_| ArpRefusal::Malformed)?;
        if arp.hw_addr_type() != ArpHardwareId::ETHERNET
            || arp.proto_addr_type() != EtherType::IPV4
            || arp.hw_addr_size() != 6
            || arp.proto_addr_size() != 4
        {
            return Err(ArpRefusal::Malformed);
        }
        if arp.operation() != ArpOperation::REQUEST {
            return Err(ArpRefusal::NotRequest);
        }
        let target: [u8; 4] = arp
            .target_protocol_addr()
            .try_into()
            .map_err(|_| ArpRefusal::Malformed)?;
        let answer = self
            .lookup(Ipv4Addr::from(target))
            .ok_or(ArpRefusal::UnknownTarget)?;
        let requester_mac =
            MacAddr::from_slice(arp.sender_hw_addr()).ok_or(ArpRefusal::Malformed)?;
        let requester_ip: [u8; 4] = arp
            .sender_protocol_addr()
            .try_into()
            .map_err(|_| ArpRefusal::Malformed)?;
        let out = out.get_mut(..REPLY_LEN).ok_or(ArpRefusal::Malformed)?;
        // Ethernet: to the requester, from the VTEP being answered for.
        let mut eth = ethernet::Frame::new_unchecked(&mut out[..]);
        eth.set_dst_addr(requester_mac);
        eth.set_src_addr(answer);
        eth.set_ethertype(ethertype::ARP);
        let reply = ArpEthIpv4Packet {
            operation: ArpOperation::REPLY,
            sender_mac: answer.0,
            sender_ipv4: target,
            target_mac: requester_mac.0,
            target_ipv4: requester_ip,
        };
        eth.payload_mut().copy_from_slice(&reply.to_bytes());
        Ok(REPLY_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const REMOTE_MAC: MacAddr = MacAddr([0x0e, 0x2a, 0x00, 0x00, 0x00, 0x02]);

    /// `who-has 10.244.2.0 tell 10.244.1.0`, broadcast, as the kernel sends it.
    fn request(target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&KERNEL_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
        f.extend_from_slice(&KERNEL_MAC);
        f.extend_from_slice(&[10, 244, 1, 0]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        f
    }

    #[test]
    fn answers_for_a_remote_gateway() {
        let mut table = ArpTable::new();
        table.insert(Ipv4Addr::new(10, 244, 2, 0), REMOTE_MAC);
        let mut out = [0u8; REPLY_LEN];
        let len = table.respond(&request([10, 244, 2, 0]), &mut out).unwrap();
        let mut want = KERNEL_MAC.to_vec();
        want.extend_from_slice(&REMOTE_MAC.0);
        want.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02]);
        want.extend_from_slice(&REMOTE_MAC.0);
        want.extend_from_slice(&[10, 244, 2, 0]);
        want.extend_from_slice(&KERNEL_MAC);
        want.extend_from_slice(&[10, 244, 1, 0]);
        assert_eq!(&out[..len], &want[..]);
    }

    #[test]
    fn refuses_unknown_targets_replies_and_garbage() {
        let table = ArpTable::new();
        let mut out = [0u8; REPLY_LEN];
        assert_eq!(
            table.respond(&request([10, 244, 9, 0]), &mut out),
            Err(ArpRefusal::UnknownTarget)
        );
        let mut reply = request([10, 244, 9, 0]);
        reply[21] = 2;
        assert_eq!(table.respond(&reply, &mut out), Err(ArpRefusal::NotRequest));
        assert_eq!(
            table.respond(&request([1, 2, 3, 4])[..30], &mut out),
            Err(ArpRefusal::Malformed)
        );
        let mut ipv6ish = request([10, 244, 9, 0]);
        ipv6ish[16] = 0x86;
        assert_eq!(
            table.respond(&ipv6ish, &mut out),
            Err(ArpRefusal::Malformed)
        );
    }
}
