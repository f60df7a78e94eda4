//! Flow identity of an inner frame: the outer UDP source port (RFC 7348
//! recommends a hash of the inner flow in 49152–65535, so one flow keeps one
//! port and ECMP spreads flows) and the worker a flow is pinned to.

use super::wire::ethernet::{self, ethertype};
use super::wire::{ipv4, ipv6, protocol};

/// First port of the dynamic range used for outer source ports.
pub const SOURCE_PORT_MIN: u16 = 49152;
const SOURCE_PORT_SPAN: u32 = 16384;

/// A stable hash of the inner flow of an Ethernet frame: addresses and ports
/// for TCP/UDP over IPv4/IPv6, addresses only for other IP, MACs otherwise.
pub fn hash(frame: &[u8]) -> u32 {
    let key = ethernet::Frame::new_checked(frame)
        .ok()
        .and_then(|eth| match eth.ethertype() {
            ethertype::IPV4 => ipv4_key(eth.payload()),
            ethertype::IPV6 => ipv6_key(eth.payload()),
            _ => None,
        });
    let key = key.unwrap_or_else(|| mix_bytes(0, frame.get(..12).unwrap_or(frame)));
    finish(key)
}

/// The outer UDP source port for a flow hash.
pub fn source_port(hash: u32) -> u16 {
    SOURCE_PORT_MIN + (hash % SOURCE_PORT_SPAN) as u16
}

/// Hashes any header with the fixed 20 bytes, whatever its version and IHL
/// say: a frame the kernel would not send still gets a stable port.
fn ipv4_key(packet: &[u8]) -> Option<u64> {
    let ip = ipv4::Header::new_checked(packet).ok()?;
    let protocol = ip.protocol();
    let mut key = mix_bytes(u64::from(protocol), ip.addresses());
    // Only the first fragment carries ports; keep all fragments on one port.
    let ihl = ip.header_len();
    if !ip.is_fragment()
        && matches!(protocol, protocol::TCP | protocol::UDP)
        && let Some(ports) = packet.get(ihl..ihl + 4)
    {
        key = mix_bytes(key, ports);
    }
    Some(key)
}

fn ipv6_key(packet: &[u8]) -> Option<u64> {
    let ip = ipv6::Header::new_checked(packet).ok()?;
    let next = ip.next_header();
    let mut key = mix_bytes(u64::from(next), ip.addresses());
    if matches!(next, protocol::TCP | protocol::UDP)
        && let Some(ports) = packet.get(ipv6::HEADER_LEN..ipv6::HEADER_LEN + 4)
    {
        key = mix_bytes(key, ports);
    }
    Some(key)
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix_bytes(mut acc: u64, bytes: &[u8]) -> u64 {
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        acc = (acc ^ u64::from_le_bytes(word))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    acc
}

fn finish(acc: u64) -> u32 {
    let h = (acc ^ (acc >> 31)).wrapping_mul(K);
    (h >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp4(src_port: u16, payload_byte: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20 + 10];
        f[12] = 0x08;
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[14 + 12..14 + 20].copy_from_slice(&[10, 244, 1, 5, 10, 244, 2, 7]);
        f[34..36].copy_from_slice(&src_port.to_be_bytes());
        f[36..38].copy_from_slice(&5201u16.to_be_bytes());
        f[60] = payload_byte;
        f
    }

    #[test]
    fn same_flow_same_port_other_flow_other_port() {
        let a = source_port(hash(&tcp4(40000, 1)));
        assert_eq!(a, source_port(hash(&tcp4(40000, 2))));
        let ports: std::collections::HashSet<u16> = (40000..40100)
            .map(|p| source_port(hash(&tcp4(p, 0))))
            .collect();
        assert!(ports.len() > 90, "poor spread: {}", ports.len());
        assert!(ports.iter().all(|p| *p >= 49152));
    }

    /// The hashes (so the outer source ports and socket choices) of frames
    /// of every kind, pinned: they must not change when the parsing does.
    #[test]
    fn hashes_are_stable() {
        use crate::core::fixtures::{arp_request, tcp4_frame, udp4_frame};
        let tcp = tcp4_frame(&[1; 50], 7, 0x18, 3);
        let mut frag = tcp.clone();
        frag[20] = 0x20;
        let mut ihl0 = tcp.clone();
        ihl0[14] = 0x40;
        let mut icmp = tcp.clone();
        icmp[23] = 1;
        let mut v6 = vec![0u8; 14 + 40 + 20];
        v6[12..15].copy_from_slice(&[0x86, 0xdd, 0x60]);
        v6[20] = 6;
        for (i, b) in v6.iter_mut().enumerate().skip(22) {
            *b = i as u8;
        }
        let frames = [
            tcp,
            udp4_frame([0x0e, 0, 0, 0, 0, 2], [0x0e, 0, 0, 0, 0, 1], 300),
            arp_request([0x0e, 0, 0, 0, 0, 1], [10, 244, 1, 0], [10, 244, 2, 0]),
            vec![0x45; 30],
            vec![0x45; 3],
            frag,
            ihl0,
            v6.clone(),
            v6[..50].to_vec(),
            icmp,
        ];
        let hashes: Vec<u32> = frames.iter().map(|f| hash(f)).collect();
        assert_eq!(
            hashes,
            [
                3306015176, 1661677534, 4244255139, 900151098, 2809496605, 308617358, 1817333261,
                3259816721, 0, 533555069
            ]
        );
    }

    #[test]
    fn garbage_does_not_panic() {
        for len in 0..80 {
            let f = vec![0x45u8; len];
            let _ = hash(&f);
        }
    }
}
