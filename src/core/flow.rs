//! Flow identity of an inner frame: the outer UDP source port (RFC 7348
//! recommends a hash of the inner flow in 49152–65535, so one flow keeps one
//! port and ECMP spreads flows) and the worker a flow is pinned to.

/// First port of the dynamic range used for outer source ports.
pub const SOURCE_PORT_MIN: u16 = 49152;
const SOURCE_PORT_SPAN: u32 = 16384;

/// A stable hash of the inner flow of an Ethernet frame: addresses and ports
/// for TCP/UDP over IPv4/IPv6, addresses only for other IP, MACs otherwise.
pub fn hash(frame: &[u8]) -> u32 {
    let ethertype = frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let l3 = frame.get(14..).unwrap_or(&[]);
    let key = match ethertype {
        Some(0x0800) => ipv4_key(l3),
        Some(0x86dd) => ipv6_key(l3),
        _ => None,
    };
    let key = key.unwrap_or_else(|| mix_bytes(0, frame.get(..12).unwrap_or(frame)));
    finish(key)
}

/// The outer UDP source port for a flow hash.
pub fn source_port(hash: u32) -> u16 {
    SOURCE_PORT_MIN + (hash % SOURCE_PORT_SPAN) as u16
}

fn ipv4_key(ip: &[u8]) -> Option<u64> {
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let addrs = ip.get(12..20)?;
    let protocol = *ip.get(9)?;
    let mut key = mix_bytes(u64::from(protocol), addrs);
    // Only the first fragment carries ports; keep all fragments on one port.
    let fragmented = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x3fff != 0;
    if !fragmented
        && matches!(protocol, 6 | 17)
        && let Some(ports) = ip.get(ihl..ihl + 4)
    {
        key = mix_bytes(key, ports);
    }
    Some(key)
}

fn ipv6_key(ip: &[u8]) -> Option<u64> {
    let next = *ip.get(6)?;
    let addrs = ip.get(8..40)?;
    let mut key = mix_bytes(u64::from(next), addrs);
    if matches!(next, 6 | 17)
        && let Some(ports) = ip.get(40..44)
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

    #[test]
    fn garbage_does_not_panic() {
        for len in 0..80 {
            let f = vec![0x45u8; len];
            let _ = hash(&f);
        }
    }
}
