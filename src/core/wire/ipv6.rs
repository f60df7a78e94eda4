//! The IPv6 fixed header (RFC 8200): a view over an IPv6 packet that starts
//! at its header. Extension headers are not parsed: the dataplane handles
//! TCP and UDP directly after the fixed header and leaves the rest alone.

use super::{Error, be16};
use crate::core::checksum;
use std::net::Ipv6Addr;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

mod field {
    use std::ops::Range;
    pub(super) const VERSION: usize = 0;
    pub(super) const PAYLOAD_LEN: Range<usize> = 4..6;
    pub(super) const NEXT_HEADER: usize = 6;
    pub(super) const SRC: Range<usize> = 8..24;
    pub(super) const DST: Range<usize> = 24..40;
}

view! {
    /// A view of an IPv6 fixed header and what follows it.
    Header,
    min: HEADER_LEN,
    short: Error = Error::Truncated
}

impl<T: AsRef<[u8]>> Header<T> {
    /// The version field (6 for IPv6).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION] >> 4
    }

    /// The payload length field (everything after the fixed header).
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::PAYLOAD_LEN.start)
    }

    /// The protocol (or extension header) that follows.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.octets(field::SRC.start))
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.octets(field::DST.start))
    }

    fn octets(&self, at: usize) -> [u8; 16] {
        let mut out = [0u8; 16];
        out.copy_from_slice(&self.buffer.as_ref()[at..at + 16]);
        out
    }

    /// Source then destination address, as the 32 bytes on the wire.
    pub fn addresses(&self) -> &[u8] {
        &self.buffer.as_ref()[field::SRC.start..field::DST.end]
    }

    /// The pseudo-header sum for a transport segment of `l4_len` bytes.
    pub fn pseudo_header_sum(&self, l4_len: u32) -> u32 {
        checksum::pseudo_header_v6(self.src_addr(), self.dst_addr(), self.next_header(), l4_len)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    /// Sets the payload length field.
    pub fn set_payload_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::PAYLOAD_LEN].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixed_header() {
        let mut b = [0u8; 44];
        b[0] = 0x60;
        b[4..6].copy_from_slice(&4u16.to_be_bytes());
        b[6] = 17;
        b[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        b[24..40].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        let h = Header::new_checked(&b[..]).unwrap();
        assert_eq!((h.version(), h.payload_len(), h.next_header()), (6, 4, 17));
        assert_eq!(h.src_addr(), "fd00::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(h.dst_addr(), "fd00::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(h.addresses(), &b[8..40]);
        let mut h = Header::new_unchecked(&mut b[..]);
        h.set_payload_len(0x1234);
        assert_eq!(b[4..6], [0x12, 0x34]);
        assert_eq!(Header::new_checked(&b[..39]).unwrap_err(), Error::Truncated);
    }
}
