//! The Ethernet II header: destination and source MAC, EtherType.

use super::{Error, be16};
use crate::core::mac::MacAddr;

/// Length of the Ethernet header (no VLAN tag: the TAP carries none).
pub const HEADER_LEN: usize = 14;

/// EtherTypes the dataplane tells apart.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
}

mod field {
    use std::ops::Range;
    pub(super) const DST: Range<usize> = 0..6;
    pub(super) const SRC: Range<usize> = 6..12;
    pub(super) const ETHERTYPE: usize = 12;
}

view! {
    /// A view of an Ethernet frame.
    Frame,
    min: HEADER_LEN,
    short: Error = Error::Truncated
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// The destination MAC.
    #[inline]
    pub fn dst_addr(&self) -> MacAddr {
        mac_at(self.buffer.as_ref(), field::DST.start)
    }

    /// The source MAC.
    #[inline]
    pub fn src_addr(&self) -> MacAddr {
        mac_at(self.buffer.as_ref(), field::SRC.start)
    }

    /// The EtherType.
    #[inline]
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    /// What follows the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination MAC.
    pub fn set_dst_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac.0);
    }

    /// Sets the source MAC.
    pub fn set_src_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac.0);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, ethertype: u16) {
        self.buffer.as_mut()[field::ETHERTYPE..HEADER_LEN]
            .copy_from_slice(&ethertype.to_be_bytes());
    }

    /// What follows the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

#[inline]
fn mac_at(b: &[u8], at: usize) -> MacAddr {
    MacAddr([b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5]])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARP_HEAD: [u8; 14] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x06,
    ];

    #[test]
    fn reads_and_writes_the_header() {
        let frame = Frame::new_checked(&ARP_HEAD[..]).unwrap();
        assert_eq!(frame.dst_addr(), MacAddr::BROADCAST);
        assert_eq!(frame.src_addr(), MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(frame.ethertype(), ethertype::ARP);
        assert!(frame.payload().is_empty());
        let mut buf = [0u8; 16];
        let mut out = Frame::new_unchecked(&mut buf[..]);
        out.set_dst_addr(MacAddr::BROADCAST);
        out.set_src_addr(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        out.set_ethertype(ethertype::ARP);
        out.payload_mut().fill(7);
        assert_eq!(buf[..14], ARP_HEAD);
        assert_eq!(buf[14..], [7, 7]);
    }

    #[test]
    fn refuses_runts() {
        assert_eq!(
            Frame::new_checked(&ARP_HEAD[..13]).unwrap_err(),
            Error::Truncated
        );
    }
}
