//! The VXLAN header of RFC 7348: a checked view over wire bytes, its
//! representation, and the 24-bit VXLAN Network Identifier.
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//! The I flag must be set; every other flag and reserved bit is sent as zero
//! and ignored on receipt.

use std::fmt;

/// Length of the VXLAN header in bytes.
pub const HEADER_LEN: usize = 8;
/// The "VNI is valid" flag in the first octet.
pub const FLAG_I: u8 = 0x08;

mod field {
    pub(super) const FLAGS: usize = 0;
    pub(super) const VNI: std::ops::Range<usize> = 4..7;
}

/// A VXLAN Network Identifier: 24 bits, so at most 16 777 215.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI.
    pub const MAX: u32 = 0x00ff_ffff;

    /// `None` when `value` does not fit in 24 bits.
    pub const fn new(value: u32) -> Option<Vni> {
        if value > Self::MAX {
            None
        } else {
            Some(Vni(value))
        }
    }

    /// The VNI as a number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The three VNI octets in network order.
    pub const fn to_be_bytes(self) -> [u8; 3] {
        let b = self.0.to_be_bytes();
        [b[1], b[2], b[3]]
    }

    /// The VNI of three octets in network order.
    pub const fn from_be_bytes(b: [u8; 3]) -> Vni {
        Vni(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why bytes are not a VXLAN header we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Fewer than eight bytes.
    Truncated,
    /// The I flag is clear: the VNI field is not valid.
    FlagNotSet,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("VXLAN header truncated"),
            Error::FlagNotSet => f.write_str("VXLAN I flag not set"),
        }
    }
}

impl std::error::Error for Error {}

view! {
    /// A read/write view of a VXLAN header followed by its payload.
    Packet,
    min: HEADER_LEN,
    short: Error = Error::Truncated
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// The flags octet.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The VNI field, whether or not the I flag says it is valid.
    pub fn vni(&self) -> Vni {
        let b = &self.buffer.as_ref()[field::VNI];
        Vni::from_be_bytes([b[0], b[1], b[2]])
    }

    /// The encapsulated Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes a header with only the I flag set and every reserved bit zero.
    pub fn fill_header(&mut self, vni: Vni) {
        self.buffer.as_mut()[..HEADER_LEN].copy_from_slice(&header_bytes(vni));
    }
}

/// The eight header bytes for `vni`.
pub const fn header_bytes(vni: Vni) -> [u8; HEADER_LEN] {
    let v = vni.to_be_bytes();
    [FLAG_I, 0, 0, 0, v[0], v[1], v[2], 0]
}

/// The meaning of a VXLAN header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    /// The network the payload belongs to.
    pub vni: Vni,
}

impl Repr {
    /// Reads a header; reserved bits and flags other than I are ignored (RFC 7348 §5).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, Error> {
        if packet.flags() & FLAG_I == 0 {
            return Err(Error::FlagNotSet);
        }
        Ok(Repr { vni: packet.vni() })
    }

    /// Writes the header (only the I flag set, reserved bits zero).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.fill_header(self.vni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A header captured from a Linux vxlan device with VNI 1.
    const VNI_1: [u8; 8] = [0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00];

    #[test]
    fn parses_kernel_header() {
        let packet = Packet::new_checked(&VNI_1[..]).unwrap();
        assert_eq!(
            Repr::parse(&packet),
            Ok(Repr {
                vni: Vni::new(1).unwrap()
            })
        );
        assert!(packet.payload().is_empty());
    }

    #[test]
    fn emits_exact_bytes() {
        let mut buf = [0xffu8; 8];
        let mut packet = Packet::new_unchecked(&mut buf[..]);
        Repr {
            vni: Vni::new(0x00ab_cdef).unwrap(),
        }
        .emit(&mut packet);
        assert_eq!(buf, [0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
        assert_eq!(header_bytes(Vni::new(1).unwrap()), VNI_1);
    }

    #[test]
    fn reserved_bits_are_ignored_on_receipt() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x00, 0x10, 0x00, 0xff];
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet).unwrap().vni.get(), 0x1000);
    }

    #[test]
    fn refuses_short_and_unflagged() {
        assert_eq!(
            Packet::new_checked(&VNI_1[..7]).unwrap_err(),
            Error::Truncated
        );
        let bytes = [0x80, 0, 0, 0, 0, 0, 1, 0];
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Err(Error::FlagNotSet));
    }

    #[test]
    fn vni_is_24_bits() {
        assert!(Vni::new(0x00ff_ffff).is_some());
        assert!(Vni::new(0x0100_0000).is_none());
        assert_eq!(
            Vni::from_be_bytes(Vni::new(4096).unwrap().to_be_bytes()).get(),
            4096
        );
    }
}
