//! The wire formats the dataplane reads and writes, as checked views over
//! byte buffers: the VXLAN header, the Ethernet header, the IPv4 and IPv6
//! headers, and the TCP/UDP headers of a frame located once ([`ip::Frame`]).
//!
//! Each view follows one pattern: `new_checked` on bytes from the wire
//! checks the lengths its accessors read, after which no accessor can panic;
//! `new_unchecked` wraps a buffer the caller built. Setters live in the
//! `AsMut` impl. ARP and the ICMPv6 messages of Neighbor Discovery are read
//! and written with etherparse (see [`crate::core::arp`],
//! [`crate::core::ndp`]), which fits them; the IP views are written here
//! because the offload code rewrites header fields in place, one frame after
//! another on the hot path, and etherparse's slices are read-only (its owned
//! headers copy and re-serialise).

/// Declares a view over a buffer that starts with a header of at least
/// `$min` bytes: the struct, `new_unchecked`, `new_checked` (which refuses a
/// shorter buffer with `$short`) and `into_inner`. Accessors are written per
/// format, next to the field offsets they read.
macro_rules! view {
    ($(#[$doc:meta])* $name:ident, min: $min:expr, short: $err:ty = $short:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Wraps `buffer` without checking its length; accessors may panic.
            pub const fn new_unchecked(buffer: T) -> $name<T> {
                $name { buffer }
            }

            /// Wraps `buffer` after checking it holds the fixed header, so no
            /// accessor of a fixed field can panic.
            pub fn new_checked(buffer: T) -> Result<$name<T>, $err> {
                if buffer.as_ref().len() < $min {
                    return Err($short);
                }
                Ok($name { buffer })
            }

            /// The wrapped buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }
        }
    };
}

pub mod ethernet;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod vxlan;

use std::fmt;

/// Why bytes are not a header a view accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Fewer bytes than the header needs.
    Truncated,
    /// A field contradicts the format (version, header length).
    Malformed,
    /// Well formed, but a protocol the view does not handle.
    Unsupported,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("header truncated"),
            Error::Malformed => f.write_str("header malformed"),
            Error::Unsupported => f.write_str("protocol not handled"),
        }
    }
}

impl std::error::Error for Error {}

/// IP protocol numbers the dataplane looks at.
pub mod protocol {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6 (RFC 4443).
    pub const ICMPV6: u8 = 58;
}

/// A big-endian `u16` at `at`; the caller has checked the length.
#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// A big-endian `u32` at `at`; the caller has checked the length.
#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
