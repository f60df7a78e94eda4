//! The IPv6 fixed header (RFC 8200): a view over an IPv6 packet that starts
//! at its header. The offload paths do not parse extension headers: they
//! handle TCP and UDP directly after the fixed header and leave the rest
//! alone. [`Header::upper_layer`] walks the extension headers for the
//! ICMPv6 code (NDP, Packet Too Big), which must find an ICMPv6 message
//! behind a Hop-by-Hop header (MLD) and never answer an ICMPv6 error.

use super::{Error, be16, ethernet};
use crate::core::checksum;
use crate::core::mac::MacAddr;
use std::net::Ipv6Addr;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// Extension header types (RFC 8200 §4) [`Header::upper_layer`] skips.
pub mod ext {
    /// Hop-by-Hop Options.
    pub const HOP_BY_HOP: u8 = 0;
    /// Routing.
    pub const ROUTING: u8 = 43;
    /// Fragment.
    pub const FRAGMENT: u8 = 44;
    /// Authentication Header (RFC 4302).
    pub const AUTH: u8 = 51;
    /// Destination Options.
    pub const DEST_OPTIONS: u8 = 60;
}

mod field {
    use std::ops::Range;
    pub(super) const VERSION: usize = 0;
    pub(super) const FIRST_WORD: Range<usize> = 0..4;
    pub(super) const PAYLOAD_LEN: Range<usize> = 4..6;
    pub(super) const NEXT_HEADER: usize = 6;
    pub(super) const HOP_LIMIT: usize = 7;
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

    /// The hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
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

    /// Finds the upper-layer header past the extension headers (Hop-by-Hop,
    /// Routing, Destination Options, Fragment, Authentication), reading only
    /// the bytes of the buffer (not trusting the payload length). Stops at a
    /// Fragment header with a non-zero offset: what follows it is the middle
    /// of the original payload, not a header. Any other next header (ESP,
    /// No Next Header, TCP, ...) is the upper layer. [`Error::Truncated`] when an
    /// extension header does not fit in the buffer.
    pub fn upper_layer(&self) -> Result<UpperLayer, Error> {
        let b = self.buffer.as_ref();
        let mut protocol = self.next_header();
        let mut at = HEADER_LEN;
        let mut fragment = Fragment::Whole;
        loop {
            let len = match protocol {
                ext::HOP_BY_HOP | ext::ROUTING | ext::DEST_OPTIONS => {
                    8 * (usize::from(*b.get(at + 1).ok_or(Error::Truncated)?) + 1)
                }
                ext::AUTH => 4 * (usize::from(*b.get(at + 1).ok_or(Error::Truncated)?) + 2),
                ext::FRAGMENT => 8,
                _ => break,
            };
            if at + len > b.len() {
                return Err(Error::Truncated);
            }
            let next = b[at];
            if protocol == ext::FRAGMENT {
                let offset = be16(b, at + 2) & 0xfff8;
                if offset != 0 {
                    return Ok(UpperLayer {
                        protocol: next,
                        offset: at + len,
                        fragment: Fragment::Later,
                    });
                }
                fragment = Fragment::First;
            }
            protocol = next;
            at += len;
        }
        Ok(UpperLayer {
            protocol,
            offset: at,
            fragment,
        })
    }
}

/// Where the upper-layer header of an IPv6 packet lies ([`Header::upper_layer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpperLayer {
    /// The upper-layer protocol (for a later fragment: the original packet's).
    pub protocol: u8,
    /// Where it starts, from the start of the IPv6 header.
    pub offset: usize,
    /// Whether a Fragment header was passed, and which fragment this is.
    pub fragment: Fragment,
}

/// Which part of a fragmented packet a packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// No Fragment header.
    Whole,
    /// A Fragment header with offset 0 (the first fragment, or an atomic one):
    /// the upper-layer header follows.
    First,
    /// A Fragment header with a non-zero offset: no upper-layer header here.
    Later,
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    /// Sets the payload length field.
    pub fn set_payload_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::PAYLOAD_LEN].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets the first word: version 6, `traffic_class`, and the low 20 bits of
    /// `flow_label`.
    pub fn set_version_class_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let word = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[field::FIRST_WORD].copy_from_slice(&word.to_be_bytes());
    }

    /// Sets the next header field.
    pub fn set_next_header(&mut self, next_header: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = next_header;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&addr.octets());
    }

    /// What follows the fixed header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// The addresses of an ICMPv6 frame weft writes to the TAP (a Neighbor
/// Advertisement, a Packet Too Big): the one place both get their Ethernet
/// and IPv6 headers from.
#[derive(Clone, Copy, Debug)]
pub struct Icmpv6Frame {
    /// Ethernet destination.
    pub eth_dst: MacAddr,
    /// Ethernet source.
    pub eth_src: MacAddr,
    /// IPv6 source.
    pub src: Ipv6Addr,
    /// IPv6 destination.
    pub dst: Ipv6Addr,
    /// IPv6 hop limit.
    pub hop_limit: u8,
}

impl Icmpv6Frame {
    /// Writes the Ethernet header and a fixed IPv6 header (traffic class and
    /// flow label 0, next header ICMPv6, payload length `icmp_len`) at the
    /// start of `frame` and returns the rest, where the ICMPv6 message goes.
    /// `frame` holds at least the two headers.
    pub fn write_headers<'a>(&self, frame: &'a mut [u8], icmp_len: u16) -> &'a mut [u8] {
        let mut eth = ethernet::Frame::new_unchecked(&mut frame[..]);
        eth.set_dst_addr(self.eth_dst);
        eth.set_src_addr(self.eth_src);
        eth.set_ethertype(ethernet::ethertype::IPV6);
        let mut ip = Header::new_unchecked(eth.payload_mut());
        ip.set_version_class_flow(0, 0);
        ip.set_payload_len(icmp_len);
        ip.set_next_header(super::protocol::ICMPV6);
        ip.set_hop_limit(self.hop_limit);
        ip.set_src_addr(self.src);
        ip.set_dst_addr(self.dst);
        &mut frame[ethernet::HEADER_LEN + HEADER_LEN..]
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

    fn header(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut b = vec![0x60, 0, 0, 0, 0, 0, next, 64];
        b.extend_from_slice(&[0; 32]);
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn finds_the_upper_layer_past_extension_headers() {
        let upper = |b: &[u8]| Header::new_checked(b).unwrap().upper_layer();
        let plain = header(6, &[0; 20]);
        assert_eq!(
            upper(&plain),
            Ok(UpperLayer {
                protocol: 6,
                offset: 40,
                fragment: Fragment::Whole
            })
        );
        // Hop-by-Hop (8) → Destination Options (16) → AH (12) → ICMPv6.
        let mut chain = vec![60, 0, 5, 2, 0, 0, 1, 0];
        chain.extend_from_slice(&[51, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        chain.extend_from_slice(&[58, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        chain.extend_from_slice(&[135, 0, 0, 0]);
        let b = header(ext::HOP_BY_HOP, &chain);
        assert_eq!(
            upper(&b),
            Ok(UpperLayer {
                protocol: 58,
                offset: 76,
                fragment: Fragment::Whole
            })
        );
        // A first fragment, then a later one.
        let mut frag = header(ext::FRAGMENT, &[17, 0, 0, 1, 0, 0, 0, 9, 0, 0]);
        assert_eq!(
            upper(&frag),
            Ok(UpperLayer {
                protocol: 17,
                offset: 48,
                fragment: Fragment::First
            })
        );
        frag[42..44].copy_from_slice(&0x00a8u16.to_be_bytes());
        assert_eq!(upper(&frag).unwrap().fragment, Fragment::Later);
        // Headers that do not fit.
        assert_eq!(
            upper(&header(ext::HOP_BY_HOP, &[58])),
            Err(Error::Truncated)
        );
        assert_eq!(
            upper(&header(ext::ROUTING, &[58, 1, 0, 0, 0, 0, 0, 0])),
            Err(Error::Truncated)
        );
        assert_eq!(
            upper(&header(ext::FRAGMENT, &[58, 0, 0])),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn writes_the_fixed_header() {
        let mut b = [0xffu8; 44];
        let mut h = Header::new_unchecked(&mut b[..]);
        h.set_version_class_flow(0xb8, 0x12345);
        h.set_next_header(58);
        h.set_hop_limit(255);
        h.set_src_addr(Ipv6Addr::UNSPECIFIED);
        h.set_dst_addr(Ipv6Addr::LOCALHOST);
        h.payload_mut().fill(7);
        assert_eq!(b[..4], [0x6b, 0x81, 0x23, 0x45]);
        let h = Header::new_checked(&b[..]).unwrap();
        assert_eq!((h.version(), h.next_header(), h.hop_limit()), (6, 58, 255));
        assert_eq!(
            (h.src_addr(), h.dst_addr()),
            (Ipv6Addr::UNSPECIFIED, Ipv6Addr::LOCALHOST)
        );
        assert_eq!(b[40..], [7; 4]);
    }
}
