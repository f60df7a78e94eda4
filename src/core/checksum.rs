//! The Internet checksum (RFC 1071), fast enough for the data path.
//!
//! Written here rather than taken from a crate because the offload path sums
//! every byte it segments or coalesces, and needs partial sums it can combine
//! (header + payload, pseudo-header + segment) without re-reading data.
//! Sums are kept as 16-bit values in network byte order inside a `u32`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The one's-complement sum of `data` read as big-endian 16-bit words (a
/// trailing odd byte is padded with zero), folded to 16 bits.
#[inline]
pub fn sum(data: &[u8]) -> u32 {
    // Summing native-order 32-bit words into u64s cannot overflow before 2^32
    // words, and the byte order of a one's-complement sum only needs fixing
    // once at the end (RFC 1071 §2B). Sixteen independent lanes over 64-byte
    // blocks let the compiler vectorise the loop without a carry chain
    // between iterations: about 1.8x faster than one accumulator on a
    // 1400-byte segment, the size the offload path sums most.
    let whole = data.len() - data.len() % 64;
    let mut acc = if whole >= WIDE_MIN {
        blocks_sum(&data[..whole])
    } else {
        blocks_sum_baseline(&data[..whole])
    };
    let mut words = data[whole..].chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_ne_bytes(tail));
    let native = fold(acc);
    u32::from(u16::from_be(native))
}

/// Below this many bytes the dispatch to [`blocks_sum`]'s widest version
/// costs more than it saves (headers are summed with the baseline loop).
const WIDE_MIN: usize = 256;

/// Sums whole 64-byte blocks as native-order 32-bit words into a u64.
///
/// Compiled also for AVX2 and AVX-512 and picked at run time (multiversion):
/// the x86-64 baseline (SSE2) has no zero-extending load, and the loop it
/// gets is three times as long. Payload checksums were a tenth of the
/// sending dataplane thread's time in a single TCP stream.
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn blocks_sum(data: &[u8]) -> u64 {
    blocks_sum_baseline(data)
}

#[inline(always)]
fn blocks_sum_baseline(data: &[u8]) -> u64 {
    let mut lanes = [0u64; 16];
    for block in data.chunks_exact(64) {
        for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(4)) {
            *lane += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    // Every word is below 2^32, so no lane and not their total can overflow
    // before 2^32 words (16 GiB); frames are at most 64 KiB.
    lanes.iter().sum()
}

/// Folds a wide one's-complement accumulator to 16 bits.
#[inline]
fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// Adds two partial sums.
#[inline]
pub fn combine(a: u32, b: u32) -> u32 {
    u32::from(fold(u64::from(a) + u64::from(b)))
}

/// Subtracts partial sum `b` from `a` (adds its one's complement).
#[inline]
pub fn subtract(a: u32, b: u32) -> u32 {
    combine(a, u32::from(!(b as u16)))
}

/// The checksum field value for a final sum: its complement, in network order.
#[inline]
pub fn finish(sum: u32) -> [u8; 2] {
    (!(fold(u64::from(sum)))).to_be_bytes()
}

/// The sum of the IPv4 pseudo-header for a transport segment of `len` bytes.
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u32) -> u32 {
    let s = src.octets();
    let d = dst.octets();
    let acc = u64::from(u16::from_be_bytes([s[0], s[1]]))
        + u64::from(u16::from_be_bytes([s[2], s[3]]))
        + u64::from(u16::from_be_bytes([d[0], d[1]]))
        + u64::from(u16::from_be_bytes([d[2], d[3]]))
        + u64::from(protocol)
        + u64::from(len);
    u32::from(fold(acc))
}

/// The sum of the IPv6 pseudo-header for a transport segment of `len` bytes.
#[inline]
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8, len: u32) -> u32 {
    let acc = u64::from(sum(&src.octets()))
        + u64::from(sum(&dst.octets()))
        + u64::from(protocol)
        + u64::from(len);
    u32::from(fold(acc))
}

/// Whether `data`, which contains its own checksum field, sums correctly.
pub fn verify(data: &[u8], pseudo: u32) -> bool {
    combine(sum(data), pseudo) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: the plain RFC 1071 loop.
    fn reference(data: &[u8]) -> u32 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |b| u32::from(*b));
            acc += hi | lo;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc
    }

    #[test]
    fn matches_reference_for_every_length_and_alignment() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 13) as u8).collect();
        for start in 0..4 {
            for end in start..data.len() {
                assert_eq!(
                    sum(&data[start..end]),
                    reference(&data[start..end]),
                    "{start}..{end}"
                );
            }
        }
    }

    #[test]
    fn the_wide_loop_matches_the_reference_on_segment_sized_data() {
        // Long enough for the run-time-selected (AVX2) version of the loop.
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 131 + i / 7) as u8).collect();
        for (start, end) in [
            (0, 256),
            (1, 1399),
            (3, 1463),
            (0, 9000),
            (5, 65_535),
            (0, 70_000),
        ] {
            assert_eq!(
                sum(&data[start..end]),
                reference(&data[start..end]),
                "{start}..{end}"
            );
        }
        let whole = &data[..64 * 1000];
        assert_eq!(blocks_sum(whole), blocks_sum_baseline(whole));
        assert_eq!(sum(&[0xff; 4096]), 0xffff);
    }

    #[test]
    fn all_ones_and_zero() {
        assert_eq!(sum(&[0xff; 64]), 0xffff);
        assert_eq!(sum(&[]), 0);
        assert_eq!(finish(0xffff), [0, 0]);
    }

    #[test]
    fn ipv4_header_from_rfc1071_style_example() {
        // An IPv4 header with a correct checksum (0xb861) verifies to 0xffff.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert!(verify(&header, 0));
        let mut zeroed = header;
        zeroed[10] = 0;
        zeroed[11] = 0;
        assert_eq!(finish(sum(&zeroed)), [0xb8, 0x61]);
    }

    #[test]
    fn partial_sums_combine() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31) as u8).collect();
        let whole = sum(&data);
        assert_eq!(combine(sum(&data[..400]), sum(&data[400..])), whole);
        assert_eq!(subtract(whole, sum(&data[400..])), sum(&data[..400]));
    }
}
