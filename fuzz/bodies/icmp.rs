//! `offload::icmp_frag_needed`: the answer to a frame too big for the
//! underlay. Invariants: no panic; an answer is given exactly for IPv4 with DF
//! that is not a later fragment nor an ICMP error, from a unicast source to a
//! unicast destination, for an MTU of at least 576; it is a valid Ethernet +
//! IPv4 + ICMP type 3 code 4 frame (both checksums verify) from the original
//! destination back to the original source, with the MTU and the quoted
//! original header; nothing is written beyond its length.
//!
//! Input: `[mtu u16][out size u8] frame...`.

use super::input::{Builder, Input};
use super::wire::{self, ETH_LEN};
use weft::core::fixtures;
use weft::core::offload;

/// The length of the answer the model expects, or `None`.
fn expected_len(frame: &[u8], mtu: u16, out_len: usize) -> Option<usize> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ihl = usize::from(*frame.get(ETH_LEN)? & 0x0f) * 4;
    if *frame.get(ETH_LEN)? >> 4 != 4 || ihl < 20 || frame.len() < ETH_LEN + ihl {
        return None;
    }
    let frag = wire::be16(frame, ETH_LEN + 6);
    if frag & 0x4000 == 0 || frag & 0x1fff != 0 {
        return None;
    }
    // RFC 1122 3.2.2: no error about a group or broadcast destination, none
    // to an unspecified, loopback, broadcast or group source; no MTU < 576.
    let (src, dst) = (
        &frame[ETH_LEN + 12..ETH_LEN + 16],
        &frame[ETH_LEN + 16..ETH_LEN + 20],
    );
    let group = |a: &[u8]| a[0] >> 4 == 0xe;
    let broadcast = |a: &[u8]| a == [255; 4];
    if group(dst) || broadcast(dst) || src[0] == 0 || src[0] == 127 || group(src) || broadcast(src)
    {
        return None;
    }
    if mtu < 576 {
        return None;
    }
    if frame[ETH_LEN + 9] == 1 && !matches!(frame.get(ETH_LEN + ihl)?, 0 | 8 | 13 | 14 | 15 | 16) {
        return None;
    }
    let quoted = (ihl + 8).min(frame.len() - ETH_LEN);
    let total = ETH_LEN + 28 + quoted;
    (total <= out_len).then_some(total)
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mtu = input.u16();
    let out_len = 40 + usize::from(input.u8());
    let frame = input.rest();
    let mut out = vec![0x5au8; out_len];
    let got = offload::icmp_frag_needed(frame, mtu, &mut out);
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
    assert_eq!(o[0..6], frame[6..12], "to the sender's MAC");
    assert_eq!(o[6..12], frame[0..6], "from the MAC it wrote to");
    assert_eq!(o[12..14], [0x08, 0x00]);
    let ip = wire::parse_ip(o).expect("an IPv4 answer");
    assert_eq!((ip.v6, ip.l4, ip.proto), (false, ETH_LEN + 20, 1));
    assert_eq!(ip.ip_len, n - ETH_LEN);
    assert!(
        wire::verifies(&o[ETH_LEN..ETH_LEN + 20], 0),
        "IPv4 header checksum"
    );
    assert_eq!(o[26..30], frame[30..34], "from the original destination");
    assert_eq!(o[30..34], frame[26..30], "to the original source");
    let icmp = &o[34..];
    assert_eq!((icmp[0], icmp[1]), (3, 4));
    assert_eq!(wire::be16(icmp, 6), mtu);
    assert!(wire::verifies(icmp, 0), "ICMP checksum");
    assert_eq!(
        icmp[8..],
        frame[ETH_LEN..ETH_LEN + icmp.len() - 8],
        "quotes the original"
    );
}

pub fn seeds() -> Vec<Vec<u8>> {
    let tcp = fixtures::tcp4_frame(&wire::payload(3000, 1), 1, 0x10, 9);
    let mut echo = fixtures::udp4_frame([0x0e, 0, 0, 0, 0, 2], [0x0e, 0, 0, 0, 0, 1], 2000);
    echo[23] = 1; // ICMP
    echo[34] = 8; // echo request
    let mut options = tcp[..14].to_vec();
    options.extend_from_slice(&[
        0x46, 0, 0x05, 0xdc, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 244, 1, 5, 10, 244, 2, 7, 1, 1, 1, 1,
    ]);
    options.extend_from_slice(&tcp[34..]);
    let mut group = tcp.clone();
    group[30..34].copy_from_slice(&[239, 1, 2, 3]);
    let mut seeds: Vec<Vec<u8>> = [tcp.clone(), echo, options, group]
        .iter()
        .map(|f| Builder::new().u16(1450).u8(88).bytes(f).build())
        .collect();
    // An MTU below 576 gets no answer.
    seeds.push(Builder::new().u16(575).u8(88).bytes(&tcp).build());
    seeds
}
