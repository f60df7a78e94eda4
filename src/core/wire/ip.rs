//! An Ethernet frame carrying TCP or UDP over IPv4 or IPv6, its headers
//! located and checked once: the view the offload code (checksums,
//! segmentation, coalescing) reads and rewrites frames through.
//!
//! [`Frame::new_checked`] finds where the IP header, the transport header and
//! the payload start ([`Layout`]) from the headers themselves — never from
//! the virtio header's `hdr_len`, which on the forwarding path can cover the
//! whole first packet — and checks that every header is whole, so no
//! accessor can panic. A segment written from a checked frame's headers is
//! wrapped again with [`Frame::new_unchecked`] and the same layout.

use super::ethernet::{self, ethertype};
use super::{Error, be16, be32, ipv4, ipv6, protocol};
use std::ops::Range;

/// TCP header flags.
pub mod tcp_flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Push the data to the application.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment number is valid.
    pub const ACK: u8 = 0x10;
    /// Congestion window reduced.
    pub const CWR: u8 = 0x80;
}

/// Length of a TCP header without options.
pub const TCP_MIN_HEADER_LEN: usize = 20;
/// Length of the UDP header.
pub const UDP_HEADER_LEN: usize = 8;

mod field {
    /// Offsets inside the TCP header.
    pub(super) mod tcp {
        pub(in super::super) const SEQ: usize = 4;
        pub(in super::super) const DATA_OFFSET: usize = 12;
        pub(in super::super) const FLAGS: usize = 13;
        pub(in super::super) const CHECKSUM: usize = 16;
    }
    /// Offsets inside the UDP header.
    pub(super) mod udp {
        pub(in super::super) const LENGTH: usize = 4;
        pub(in super::super) const CHECKSUM: usize = 6;
    }
    /// Offsets inside the IPv4 header of fields that differ between segments.
    pub(super) mod ipv4 {
        pub(in super::super) const LENGTH: usize = 2;
        pub(in super::super) const IDENT: usize = 4;
        pub(in super::super) const CHECKSUM: usize = 10;
    }
    /// The payload length inside the IPv6 header.
    pub(super) const IPV6_PAYLOAD_LEN: usize = 4;
}

/// Where the headers of a TCP or UDP frame lie, as offsets from the start of
/// the Ethernet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    v6: bool,
    l4: usize,
    hdr_len: usize,
    proto: u8,
}

impl Layout {
    /// IPv6 (else IPv4).
    #[inline]
    pub fn is_ipv6(&self) -> bool {
        self.v6
    }

    /// The transport protocol: [`protocol::TCP`] or [`protocol::UDP`].
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.proto
    }

    /// TCP (else UDP).
    #[inline]
    pub fn is_tcp(&self) -> bool {
        self.proto == protocol::TCP
    }

    /// Where the transport header starts.
    #[inline]
    pub fn transport_offset(&self) -> usize {
        self.l4
    }

    /// The length of all headers, Ethernet to transport: the payload starts here.
    #[inline]
    pub fn headers_len(&self) -> usize {
        self.hdr_len
    }

    /// The length of the IP header (with IPv4 options).
    #[inline]
    pub fn ip_header_len(&self) -> usize {
        self.l4 - ethernet::HEADER_LEN
    }

    /// The length of the transport header (with TCP options).
    #[inline]
    pub fn transport_header_len(&self) -> usize {
        self.hdr_len - self.l4
    }

    /// The transport checksum's offset inside the transport header.
    #[inline]
    pub fn checksum_offset(&self) -> usize {
        if self.is_tcp() {
            field::tcp::CHECKSUM
        } else {
            field::udp::CHECKSUM
        }
    }

    /// Where the IP source and destination addresses lie.
    #[inline]
    pub fn addresses(&self) -> Range<usize> {
        let ip = ethernet::HEADER_LEN;
        if self.v6 {
            ip + 8..ip + 40
        } else {
            ip + 12..ip + 20
        }
    }
}

/// A view of an Ethernet frame carrying TCP or UDP over IP.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
    layout: Layout,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Locates and checks the headers. [`Error::Unsupported`]: not IPv4 or
    /// IPv6 (or shorter than an Ethernet header), or not TCP or UDP right
    /// after the fixed IP header; [`Error::Malformed`]: a header that
    /// contradicts the format or does not fit in the frame.
    pub fn new_checked(buffer: T) -> Result<Frame<T>, Error> {
        let frame = buffer.as_ref();
        let eth = ethernet::Frame::new_checked(frame).map_err(|_| Error::Unsupported)?;
        let (v6, l4, proto) = match eth.ethertype() {
            ethertype::IPV4 => {
                let ip = ipv4::Header::new_checked(eth.payload()).map_err(|_| Error::Malformed)?;
                ip.check_header_len().map_err(|_| Error::Malformed)?;
                (false, ethernet::HEADER_LEN + ip.header_len(), ip.protocol())
            }
            ethertype::IPV6 => {
                let ip = ipv6::Header::new_checked(eth.payload()).map_err(|_| Error::Malformed)?;
                if ip.version() != 6 {
                    return Err(Error::Malformed);
                }
                // Extension headers are not handled.
                (
                    true,
                    ethernet::HEADER_LEN + ipv6::HEADER_LEN,
                    ip.next_header(),
                )
            }
            _ => return Err(Error::Unsupported),
        };
        let hdr_len = match proto {
            protocol::TCP => {
                let offset = frame
                    .get(l4 + field::tcp::DATA_OFFSET)
                    .ok_or(Error::Malformed)?;
                let len = usize::from(offset >> 4) * 4;
                if len < TCP_MIN_HEADER_LEN {
                    return Err(Error::Malformed);
                }
                l4 + len
            }
            protocol::UDP => l4 + UDP_HEADER_LEN,
            _ => return Err(Error::Unsupported),
        };
        if hdr_len > frame.len() {
            return Err(Error::Malformed);
        }
        let layout = Layout {
            v6,
            l4,
            hdr_len,
            proto,
        };
        Ok(Frame { buffer, layout })
    }

    /// Wraps a buffer whose headers were written from a checked frame with
    /// this layout (at least [`Layout::headers_len`] bytes); accessors may
    /// panic if they were not.
    #[inline]
    pub fn new_unchecked(buffer: T, layout: Layout) -> Frame<T> {
        Frame { buffer, layout }
    }

    /// Where the headers lie.
    #[inline]
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The whole frame.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The Ethernet header.
    #[inline]
    pub fn ethernet_header(&self) -> &[u8] {
        &self.buffer.as_ref()[..ethernet::HEADER_LEN]
    }

    /// The IP header (with IPv4 options).
    #[inline]
    pub fn ip_header(&self) -> &[u8] {
        &self.buffer.as_ref()[ethernet::HEADER_LEN..self.layout.l4]
    }

    /// Every header, Ethernet to transport.
    #[inline]
    pub fn headers(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.layout.hdr_len]
    }

    /// The transport payload (to the end of the buffer).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.layout.hdr_len..]
    }

    /// The IP source and destination addresses, as on the wire.
    #[inline]
    pub fn addresses(&self) -> &[u8] {
        &self.buffer.as_ref()[self.layout.addresses()]
    }

    /// The transport source and destination ports, as on the wire.
    #[inline]
    pub fn ports(&self) -> &[u8] {
        &self.buffer.as_ref()[self.layout.l4..self.layout.l4 + 4]
    }

    fn ipv4(&self) -> ipv4::Header<&[u8]> {
        ipv4::Header::new_unchecked(&self.buffer.as_ref()[ethernet::HEADER_LEN..])
    }

    fn ipv6(&self) -> ipv6::Header<&[u8]> {
        ipv6::Header::new_unchecked(&self.buffer.as_ref()[ethernet::HEADER_LEN..])
    }

    /// IPv4: the identification field (IPv6: 0).
    #[inline]
    pub fn ipv4_ident(&self) -> u16 {
        if self.layout.v6 {
            0
        } else {
            self.ipv4().ident()
        }
    }

    /// IPv4: the "don't fragment" flag (IPv6: true, routers never fragment it).
    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.layout.v6 || self.ipv4().dont_frag()
    }

    /// IPv4: whether this is a fragment (IPv6: fragments have an extension
    /// header, which the layout refuses).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        !self.layout.v6 && self.ipv4().is_fragment()
    }

    /// The IP datagram's length as its header states it (IPv6: fixed header
    /// plus payload length).
    #[inline]
    pub fn ip_len(&self) -> usize {
        if self.layout.v6 {
            ipv6::HEADER_LEN + usize::from(self.ipv6().payload_len())
        } else {
            usize::from(self.ipv4().total_len())
        }
    }

    /// The transport segment's length as the IP header states it.
    #[inline]
    pub fn transport_len(&self) -> usize {
        self.ip_len().saturating_sub(self.layout.ip_header_len())
    }

    /// TCP: the sequence number.
    #[inline]
    pub fn tcp_seq(&self) -> u32 {
        be32(self.buffer.as_ref(), self.layout.l4 + field::tcp::SEQ)
    }

    /// TCP: the flags octet.
    #[inline]
    pub fn tcp_flags(&self) -> u8 {
        self.buffer.as_ref()[self.layout.l4 + field::tcp::FLAGS]
    }

    /// UDP: the length field.
    #[inline]
    pub fn udp_len(&self) -> u16 {
        be16(self.buffer.as_ref(), self.layout.l4 + field::udp::LENGTH)
    }

    /// Where the transport checksum lies in the frame.
    #[inline]
    pub fn transport_checksum_at(&self) -> usize {
        self.layout.l4 + self.layout.checksum_offset()
    }

    /// The transport checksum field.
    #[inline]
    pub fn transport_checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), self.transport_checksum_at())
    }

    /// The pseudo-header sum for a transport segment of `l4_len` bytes.
    #[inline]
    pub fn pseudo_header_sum(&self, l4_len: u32) -> u32 {
        if self.layout.v6 {
            self.ipv6().pseudo_header_sum(l4_len)
        } else {
            self.ipv4().pseudo_header_sum(l4_len)
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    fn put16(&mut self, at: usize, value: u16) {
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the IP length fields for a transport segment of `l4_len` bytes
    /// (IPv4: total length; IPv6: payload length).
    #[inline]
    pub fn set_ip_len_for(&mut self, l4_len: usize) {
        let ip = ethernet::HEADER_LEN;
        if self.layout.v6 {
            self.put16(ip + field::IPV6_PAYLOAD_LEN, l4_len as u16);
        } else {
            let total = (self.layout.ip_header_len() + l4_len) as u16;
            self.put16(ip + field::ipv4::LENGTH, total);
        }
    }

    /// IPv4: sets the identification field.
    #[inline]
    pub fn set_ipv4_ident(&mut self, ident: u16) {
        self.put16(ethernet::HEADER_LEN + field::ipv4::IDENT, ident);
    }

    /// IPv4: stores a header checksum (network order).
    #[inline]
    pub fn set_ipv4_checksum(&mut self, value: [u8; 2]) {
        let at = ethernet::HEADER_LEN + field::ipv4::CHECKSUM;
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&value);
    }

    /// IPv4: computes and stores the header checksum.
    pub fn fill_ipv4_checksum(&mut self) {
        let l4 = self.layout.l4;
        let mut ip =
            ipv4::Header::new_unchecked(&mut self.buffer.as_mut()[ethernet::HEADER_LEN..l4]);
        ip.fill_checksum();
    }

    /// TCP: sets the sequence number.
    #[inline]
    pub fn set_tcp_seq(&mut self, seq: u32) {
        let at = self.layout.l4 + field::tcp::SEQ;
        self.buffer.as_mut()[at..at + 4].copy_from_slice(&seq.to_be_bytes());
    }

    /// TCP: sets the flags octet.
    #[inline]
    pub fn set_tcp_flags(&mut self, flags: u8) {
        let at = self.layout.l4 + field::tcp::FLAGS;
        self.buffer.as_mut()[at] = flags;
    }

    /// UDP: sets the length field.
    #[inline]
    pub fn set_udp_len(&mut self, len: u16) {
        self.put16(self.layout.l4 + field::udp::LENGTH, len);
    }

    /// Stores the transport checksum (network order).
    #[inline]
    pub fn set_transport_checksum(&mut self, value: [u8; 2]) {
        let at = self.transport_checksum_at();
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&value);
    }

    /// Zeroes the fields in which the segments of one flow differ: the IP
    /// lengths, IPv4 identification and header checksum, the TCP sequence
    /// number, flags and checksum, the UDP length and checksum. What is left
    /// is what every segment shares.
    pub fn clear_per_segment_fields(&mut self) {
        let ip = ethernet::HEADER_LEN;
        let l4 = self.layout.l4;
        let b = self.buffer.as_mut();
        if self.layout.v6 {
            b[ip + field::IPV6_PAYLOAD_LEN..ip + field::IPV6_PAYLOAD_LEN + 2].fill(0);
        } else {
            b[ip + field::ipv4::LENGTH..ip + field::ipv4::IDENT + 2].fill(0);
            b[ip + field::ipv4::CHECKSUM..ip + field::ipv4::CHECKSUM + 2].fill(0);
        }
        if self.layout.is_tcp() {
            b[l4 + field::tcp::SEQ..l4 + field::tcp::SEQ + 4].fill(0);
            b[l4 + field::tcp::FLAGS] = 0;
            b[l4 + field::tcp::CHECKSUM..l4 + field::tcp::CHECKSUM + 2].fill(0);
        } else {
            b[l4 + field::udp::LENGTH..l4 + field::udp::CHECKSUM + 2].fill(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fixtures::{tcp4_frame, udp4_frame};

    #[test]
    fn locates_tcp_over_ipv4_with_options() {
        let f = tcp4_frame(&[7; 100], 1000, 0x18, 9);
        let frame = Frame::new_checked(&f[..]).unwrap();
        let l = frame.layout();
        assert!(!l.is_ipv6() && l.is_tcp());
        assert_eq!((l.transport_offset(), l.headers_len()), (34, 66));
        assert_eq!((l.ip_header_len(), l.transport_header_len()), (20, 32));
        assert_eq!(frame.payload(), &[7; 100][..]);
        assert_eq!((frame.tcp_seq(), frame.tcp_flags()), (1000, 0x18));
        assert_eq!((frame.ipv4_ident(), frame.dont_frag()), (9, true));
        assert_eq!((frame.ip_len(), frame.transport_len()), (152, 132));
        assert_eq!(frame.transport_checksum_at(), 50);
        assert_eq!(frame.addresses(), &[10, 244, 1, 5, 10, 244, 2, 7]);
        assert_eq!(frame.ports(), &[0x9c, 0x40, 0x14, 0x51]);
    }

    #[test]
    fn rewrites_segment_fields() {
        let f = udp4_frame([2; 6], [1; 6], 100);
        let mut buf = f.clone();
        let layout = Frame::new_checked(&f[..]).unwrap().layout();
        assert_eq!(layout.headers_len(), 42);
        let mut frame = Frame::new_unchecked(&mut buf[..], layout);
        frame.set_ip_len_for(20);
        frame.set_udp_len(20);
        frame.set_ipv4_ident(5);
        frame.fill_ipv4_checksum();
        assert_eq!((frame.ip_len(), frame.udp_len()), (40, 20));
        assert!(crate::core::checksum::verify(frame.ip_header(), 0));
        frame.clear_per_segment_fields();
        assert_eq!(
            (frame.ip_len(), frame.udp_len(), frame.ipv4_ident()),
            (0, 0, 0)
        );
    }

    #[test]
    fn refuses_what_it_cannot_locate() {
        let f = tcp4_frame(&[0; 10], 1, 0x10, 1);
        assert_eq!(
            Frame::new_checked(&f[..13]).unwrap_err(),
            Error::Unsupported
        );
        assert_eq!(Frame::new_checked(&f[..40]).unwrap_err(), Error::Malformed);
        let mut bad_offset = f.clone();
        bad_offset[46] = 0x40;
        assert_eq!(
            Frame::new_checked(&bad_offset[..]).unwrap_err(),
            Error::Malformed
        );
        let mut icmp = f.clone();
        icmp[23] = protocol::ICMP;
        assert_eq!(
            Frame::new_checked(&icmp[..]).unwrap_err(),
            Error::Unsupported
        );
        let mut arp = f;
        arp[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
        assert_eq!(
            Frame::new_checked(&arp[..]).unwrap_err(),
            Error::Unsupported
        );
    }
}
