//! The IPv4 header (RFC 791): a view over an IPv4 packet that starts at its
//! header.
//!
//! [`Header::new_checked`] checks only that the fixed 20 bytes are there, so
//! that code which looks at any IPv4-typed frame (the flow hash) can read the
//! fixed fields of a header with a nonsense version or length as well;
//! [`Header::check_header_len`] checks the version and that the options the
//! header length claims are there too.

use super::{Error, be16};
use crate::core::checksum;
use std::net::Ipv4Addr;

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// Flags and fragment offset: "don't fragment".
const DF: u16 = 0x4000;
/// Flags and fragment offset: "more fragments" and the offset.
const MF_AND_OFFSET: u16 = 0x3fff;
/// Flags and fragment offset: the offset alone.
const OFFSET: u16 = 0x1fff;

mod field {
    use std::ops::Range;
    pub(super) const VER_IHL: usize = 0;
    pub(super) const TOS: usize = 1;
    pub(super) const LENGTH: Range<usize> = 2..4;
    pub(super) const IDENT: Range<usize> = 4..6;
    pub(super) const FLAGS_FRAG: Range<usize> = 6..8;
    pub(super) const TTL: usize = 8;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const CHECKSUM: Range<usize> = 10..12;
    pub(super) const SRC: Range<usize> = 12..16;
    pub(super) const DST: Range<usize> = 16..20;
}

view! {
    /// A view of an IPv4 header and what follows it.
    Header,
    min: MIN_HEADER_LEN,
    short: Error = Error::Truncated
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Checks the version is 4, the header length at least 20, and that the
    /// whole header with its options is in the buffer.
    pub fn check_header_len(&self) -> Result<(), Error> {
        let len = self.header_len();
        if self.version() != 4 || len < MIN_HEADER_LEN {
            return Err(Error::Malformed);
        }
        if self.buffer.as_ref().len() < len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The version field (4 for IPv4).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length the IHL field states, in bytes (unchecked: may be
    /// under 20 or beyond the buffer until [`Header::check_header_len`]).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The total length field.
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// The identification field.
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT.start)
    }

    fn flags_frag(&self) -> u16 {
        be16(self.buffer.as_ref(), field::FLAGS_FRAG.start)
    }

    /// The "don't fragment" flag.
    pub fn dont_frag(&self) -> bool {
        self.flags_frag() & DF != 0
    }

    /// Whether this is a fragment: more fragments follow, or it is not the first.
    pub fn is_fragment(&self) -> bool {
        self.flags_frag() & MF_AND_OFFSET != 0
    }

    /// Whether this is a fragment other than the first (it carries no transport header).
    pub fn is_later_fragment(&self) -> bool {
        self.flags_frag() & OFFSET != 0
    }

    /// The time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Source then destination address, as the eight bytes on the wire.
    pub fn addresses(&self) -> &[u8] {
        &self.buffer.as_ref()[field::SRC.start..field::DST.end]
    }

    /// The pseudo-header sum for a transport segment of `l4_len` bytes.
    pub fn pseudo_header_sum(&self, l4_len: u32) -> u32 {
        checksum::pseudo_header_v4(self.src_addr(), self.dst_addr(), self.protocol(), l4_len)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    /// Sets version 4 and the header length (a multiple of 4, 20 to 60).
    pub fn set_version_and_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((len / 4) as u8 & 0x0f);
    }

    /// Sets the type of service (DSCP and ECN) octet.
    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[field::TOS] = tos;
    }

    /// Sets the total length field.
    pub fn set_total_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets the identification field.
    pub fn set_ident(&mut self, ident: u16) {
        self.buffer.as_mut()[field::IDENT].copy_from_slice(&ident.to_be_bytes());
    }

    /// Sets the flags (only "don't fragment" may be set) and a zero fragment offset.
    pub fn set_dont_frag(&mut self, df: bool) {
        let value = if df { DF } else { 0 };
        self.buffer.as_mut()[field::FLAGS_FRAG].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the time to live.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the protocol of the payload.
    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol;
    }

    /// Stores a header checksum (network order).
    pub fn set_checksum(&mut self, value: [u8; 2]) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&addr.octets());
    }

    /// Computes and stores the header checksum over [`Header::header_len`] bytes.
    pub fn fill_checksum(&mut self) {
        self.set_checksum([0, 0]);
        let len = self.header_len();
        let sum = checksum::finish(checksum::sum(&self.buffer.as_ref()[..len]));
        self.set_checksum(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header from the wire: 10.244.1.5 → 10.244.2.7, TCP, DF, ID 0x1234.
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x34, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x0f, 0x9d, 10, 244, 1, 5, 10,
        244, 2, 7,
    ];

    #[test]
    fn reads_every_fixed_field() {
        let h = Header::new_checked(&HEADER[..]).unwrap();
        assert_eq!(h.check_header_len(), Ok(()));
        assert_eq!((h.version(), h.header_len(), h.total_len()), (4, 20, 0x34));
        assert_eq!(
            (h.ident(), h.dont_frag(), h.is_fragment()),
            (0x1234, true, false)
        );
        assert_eq!((h.ttl(), h.protocol()), (64, 6));
        assert_eq!(h.src_addr(), Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(h.dst_addr(), Ipv4Addr::new(10, 244, 2, 7));
        assert_eq!(h.addresses(), &HEADER[12..20]);
        assert!(checksum::verify(&HEADER, 0), "the fixture's checksum");
    }

    #[test]
    fn writes_what_it_reads() {
        let mut buf = [0u8; 20];
        let mut h = Header::new_unchecked(&mut buf[..]);
        h.set_version_and_header_len(20);
        h.set_total_len(0x34);
        h.set_ident(0x1234);
        h.set_dont_frag(true);
        h.set_ttl(64);
        h.set_protocol(6);
        h.set_src_addr(Ipv4Addr::new(10, 244, 1, 5));
        h.set_dst_addr(Ipv4Addr::new(10, 244, 2, 7));
        h.fill_checksum();
        assert_eq!(buf, HEADER);
    }

    #[test]
    fn fragments_and_bad_lengths() {
        let mut b = HEADER;
        b[6] = 0x20; // MF
        let h = Header::new_checked(&b[..]).unwrap();
        assert!(h.is_fragment() && !h.is_later_fragment());
        b[6] = 0x00;
        b[7] = 0x01; // offset 8
        let h = Header::new_checked(&b[..]).unwrap();
        assert!(h.is_fragment() && h.is_later_fragment());
        assert_eq!(
            Header::new_checked(&HEADER[..19]).unwrap_err(),
            Error::Truncated
        );
        let mut short_ihl = HEADER;
        short_ihl[0] = 0x44;
        let h = Header::new_checked(&short_ihl[..]).unwrap();
        assert_eq!(h.header_len(), 16);
        assert_eq!(h.check_header_len(), Err(Error::Malformed));
        let mut options = HEADER;
        options[0] = 0x46;
        let h = Header::new_checked(&options[..]).unwrap();
        assert_eq!(h.check_header_len(), Err(Error::Truncated));
        let mut v6 = HEADER;
        v6[0] = 0x65;
        let h = Header::new_checked(&v6[..]).unwrap();
        assert_eq!(h.check_header_len(), Err(Error::Malformed));
    }
}
