//! `offload::icmp6_packet_too_big`: the answer to an IPv6 frame too big for
//! the underlay. Invariants: no panic; an answer is given exactly for IPv6
//! longer than the MTU (raised to 1280), from a unicast source other than
//! `::` and `::1`, to a unicast destination, whose extension headers can be
//! read, not a later fragment, and not an ICMPv6 error or Redirect; it is a
//! valid Ethernet + IPv6 + ICMPv6 type 2 code 0 frame from the original
//! destination back to the original source (MACs swapped, hop limit 64),
//! with the MTU, the checksum right, and the original packet quoted up to
//! 1280 bytes in all; nothing is written without an answer nor past it.
//!
//! Input: `[mtu u16][out size u16] frame...`.

use super::input::{Builder, Input};
use super::wire::{self, ETH_LEN};
use weft::core::offload;

/// Whether the upper layer of `ip` is readable, not a later fragment and not
/// an ICMPv6 error or Redirect.
fn eligible(ip: &[u8]) -> bool {
    let (mut next, mut at) = (ip[6], 40);
    loop {
        let len = match next {
            0 | 43 | 60 => match ip.get(at + 1) {
                Some(l) => 8 * (usize::from(*l) + 1),
                None => return false,
            },
            51 => match ip.get(at + 1) {
                Some(l) => 4 * (usize::from(*l) + 2),
                None => return false,
            },
            44 => 8,
            _ => break,
        };
        if at + len > ip.len() {
            return false;
        }
        if next == 44 && wire::be16(ip, at + 2) & 0xfff8 != 0 {
            return false; // a later fragment: no upper-layer header to read
        }
        next = ip[at];
        at += len;
    }
    if next == 58 {
        return matches!(ip.get(at), Some(t) if *t >= 128 && *t != 137);
    }
    true
}

/// The length of the answer the model expects, or `None`.
fn expected_len(frame: &[u8], mtu: u32, out_len: usize) -> Option<usize> {
    if frame.get(12..14)? != [0x86, 0xdd] {
        return None;
    }
    let ip = frame.get(ETH_LEN..)?;
    if ip.len() < 40 || ip[0] >> 4 != 6 || ip.len() <= mtu.max(1280) as usize {
        return None;
    }
    let (src, dst) = (&ip[8..24], &ip[24..40]);
    let unspecified = src.iter().all(|b| *b == 0);
    let loopback = src[..15].iter().all(|b| *b == 0) && src[15] == 1;
    if unspecified || loopback || src[0] == 0xff || dst[0] == 0xff || !eligible(ip) {
        return None;
    }
    let total = ETH_LEN + 48 + ip.len().min(1232);
    (total <= out_len).then_some(total)
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mtu = u32::from(input.u16());
    let out_len = usize::from(input.u16() % 1400);
    let frame = input.rest();
    let mut out = vec![0x5au8; out_len];
    let got = offload::icmp6_packet_too_big(frame, mtu, &mut out);
    assert_eq!(got, expected_len(frame, mtu, out_len));
    let Some(n) = got else {
        assert!(
            out.iter().all(|b| *b == 0x5a),
            "nothing written without an answer"
        );
        return;
    };
    assert!(
        out[n..].iter().all(|b| *b == 0x5a),
        "nothing written past the answer"
    );
    let o = &out[..n];
    assert!(n - ETH_LEN <= 1280, "no longer than the IPv6 minimum MTU");
    assert_eq!(o[0..6], frame[6..12], "to the sender's MAC");
    assert_eq!(o[6..12], frame[0..6], "from the MAC it wrote to");
    assert_eq!(o[12..14], [0x86, 0xdd]);
    let ip = wire::parse_ip(o).expect("an IPv6 answer");
    assert_eq!((ip.v6, ip.l4, ip.proto), (true, ETH_LEN + 40, 58));
    assert_eq!(ip.ip_len, n - ETH_LEN);
    assert_eq!(o[14..18], [0x60, 0, 0, 0], "class and flow label 0");
    assert_eq!(o[21], 64, "hop limit");
    assert_eq!(o[22..38], frame[38..54], "from the original destination");
    assert_eq!(o[38..54], frame[22..38], "to the original source");
    let icmp = &o[54..];
    assert_eq!((icmp[0], icmp[1]), (2, 0));
    assert_eq!(wire::be32(icmp, 4), mtu.max(1280));
    assert!(
        wire::verifies(icmp, ip.pseudo(icmp.len())),
        "ICMPv6 checksum"
    );
    assert_eq!(
        icmp[8..],
        frame[ETH_LEN..ETH_LEN + icmp.len() - 8],
        "quotes the original"
    );
}

/// An IPv6 frame of `len` bytes after the Ethernet header, `next` and then
/// `upper` (padded with a pattern).
fn ipv6_frame(src_last: u8, dst_first: u8, next: u8, upper: &[u8], len: usize) -> Vec<u8> {
    let mut f = vec![
        0x0e, 0, 0, 0, 0, 2, 0x0e, 0, 0, 0, 0, 1, 0x86, 0xdd, 0x60, 0, 0, 0,
    ];
    f.extend_from_slice(&((len - 40) as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&[
        0xfd, 0, 0, 0x10, 2, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, src_last,
    ]);
    f.extend_from_slice(&[dst_first, 0, 0, 0x10, 2, 0x44, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7]);
    f.extend_from_slice(upper);
    f.extend_from_slice(&wire::payload(len - 40 - upper.len(), 3));
    f
}

pub fn seeds() -> Vec<Vec<u8>> {
    let tcp = wire::tcp6_frame(&wire::payload(1500, 1), 1, 0x10);
    let mut unspecified = ipv6_frame(0, 0xfd, 17, &[], 1400);
    unspecified[22..38].fill(0);
    let frames = [
        tcp,
        ipv6_frame(5, 0xfd, 58, &[128, 0, 0, 0, 0, 1, 0, 1], 1400),
        ipv6_frame(5, 0xfd, 58, &[1, 4, 0, 0, 0, 0, 0, 0], 1400),
        ipv6_frame(5, 0xfd, 44, &[17, 0, 0, 1, 0, 0, 0, 9], 1600),
        ipv6_frame(
            5,
            0xfd,
            0,
            &[60, 0, 1, 4, 0, 0, 0, 0, 58, 0, 1, 4, 0, 0, 0, 0, 2],
            1400,
        ),
        unspecified,
        ipv6_frame(5, 0xff, 17, &[], 1400),
    ];
    let mtus = [1450u16, 1300, 1000, 1450, 1280, 1450, 1450];
    frames
        .iter()
        .zip(mtus)
        .map(|(f, mtu)| Builder::new().u16(mtu).u16(1300).bytes(f).build())
        .collect()
}
