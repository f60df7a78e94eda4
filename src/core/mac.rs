//! Ethernet MAC addresses as flannel writes them: lowercase, colon separated.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// A random locally administered unicast address, as flannel makes them:
    /// the multicast bit cleared and the local bit set.
    pub fn random_local<R: rand::Rng + ?Sized>(rng: &mut R) -> MacAddr {
        let mut b = [0u8; 6];
        rng.fill_bytes(&mut b);
        b[0] = (b[0] & 0xfe) | 0x02;
        MacAddr(b)
    }

    /// The first six bytes of `bytes`; `None` when there are fewer.
    pub fn from_slice(bytes: &[u8]) -> Option<MacAddr> {
        bytes.get(..6)?.try_into().ok().map(MacAddr)
    }

    /// The six octets.
    pub fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Group addresses (broadcast included) have the low bit of the first octet set.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Locally administered unicast (how flannel and weft make VtepMACs).
    pub fn is_local_unicast(self) -> bool {
        self.0[0] & 0x03 == 0x02
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not a 48-bit MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?} (want six hex octets such as 0e:2a:00:11:22:33)")]
pub struct ParseMacError(String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    /// Accepts `:` or `-` separated hex octets, as Go's `net.ParseMAC` does for 48-bit addresses.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_owned());
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_flannel_format() {
        let mac: MacAddr = "c6:d2:32:6f:8f:44".parse().unwrap();
        assert_eq!(mac.0, [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]);
        assert_eq!(mac.to_string(), "c6:d2:32:6f:8f:44");
        assert_eq!("C6-D2-32-6F-8F-44".parse::<MacAddr>().unwrap(), mac);
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            r#""c6:d2:32:6f:8f:44""#
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "c6:d2:32:6f:8f",
            "c6:d2:32:6f:8f:44:00",
            "c6:d2:32:6f:8f:4g",
            "c6d2:32:6f:8f:44",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn random_is_local_unicast() {
        let mut rng = rand::rng();
        for _ in 0..100 {
            let mac = MacAddr::random_local(&mut rng);
            assert!(mac.is_local_unicast() && !mac.is_multicast(), "{mac}");
        }
    }
}
